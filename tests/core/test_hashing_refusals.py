"""Every refusal of eximauthd.core.hashing, pinned by its outcome: a refused value never matches.

Each test asserts ``matched`` (what authn turns into Exim's ``yes``/``no``), not only the
reason; ceilings are tested exactly at the limit and one past it.  Values are made here with
the cheapest costs the schemes allow (bcrypt cost 4, SHA-crypt 1000 rounds).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import replace

import argon2
import bcrypt
import pytest
from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

from eximauthd.core import legacy
from eximauthd.core.hashing import Hasher, Scheme, VerifyResult, identify_scheme, mysql323
from eximauthd.errors import HashingError

from ..support import FAST_HASHING

PASSWORD = "correct horse"


# Fixed salts: the same values (and so the same test ids) in every process; scripts/mutation
# collects the tests in one process and runs them by id in another.
_SALT = "AbCdEfGhIjKlMnOp"


def _bcrypt(password: str = PASSWORD, cost: int = 4, ident: str = "2b") -> str:
    made = bcrypt.hashpw(password.encode(), f"$2b${cost:02d}$AbCdEfGhIjKlMnOpQrStUu".encode())
    return f"${ident}$" + made.decode()[4:]


def _ssha(password: str = PASSWORD, salt: bytes = b"saltsalt",
          digest: type = hashlib.sha1) -> str:  # type: ignore[type-arg]
    raw = digest(password.encode() + salt).digest() + salt
    return base64.b64encode(raw).decode()


# --- the crypt forms the module promises ---------------------------------------------------

@pytest.mark.parametrize(("stored", "scheme"), [
    pytest.param(sha512_crypt.using(rounds=1000, salt=_SALT).hash(PASSWORD),
                 Scheme.SHA512_CRYPT, id="$6$"),
    pytest.param(sha256_crypt.using(rounds=1000, salt=_SALT).hash(PASSWORD),
                 Scheme.SHA256_CRYPT, id="$5$"),
    pytest.param(md5_crypt.using(salt="AbCdEfGh").hash(PASSWORD),
                 Scheme.MD5_CRYPT, id="$1$"),
    pytest.param(_bcrypt(ident="2y"), Scheme.BCRYPT, id="$2y$"),
    pytest.param(_bcrypt(ident="2a"), Scheme.BCRYPT, id="$2a$"),
    pytest.param(_bcrypt(ident="2b"), Scheme.BCRYPT, id="$2b$"),
])
@pytest.mark.parametrize("prefix", ["", "{CRYPT}", "{crypt}"])
def test_crypt_values_verify_bare_and_under_the_crypt_prefix(
        hasher: Hasher, stored: str, scheme: Scheme, prefix: str) -> None:
    """{CRYPT}$6$..., {CRYPT}$2y$... and the bare forms match their password, and only it."""
    result = hasher.verify(prefix + stored, PASSWORD)
    assert result == VerifyResult(True, scheme, "ok", needs_rehash=True)
    wrong = hasher.verify(prefix + stored, PASSWORD + "!")
    assert wrong == VerifyResult(False, scheme, "mismatch")


@pytest.mark.parametrize(("prefix", "stored"), [
    ("{SHA512-CRYPT}", sha512_crypt.using(rounds=1000, salt=_SALT).hash(PASSWORD)),
    ("{SHA256-CRYPT}", sha256_crypt.using(rounds=1000, salt=_SALT).hash(PASSWORD)),
    ("{MD5-CRYPT}", md5_crypt.using(salt="AbCdEfGh").hash(PASSWORD)),
    ("{BLF-CRYPT}", _bcrypt(ident="2y")),
])
def test_dovecot_crypt_prefixes_verify(hasher: Hasher, prefix: str, stored: str) -> None:
    """Each Dovecot {SCHEME} prefix with its matching crypt form verifies."""
    assert hasher.verify(prefix + stored, PASSWORD).matched
    assert not hasher.verify(prefix + stored, "x").matched


@pytest.mark.parametrize(("stored", "label"), [
    ("{CRYPT}$y$j9T$salt$hash", "{CRYPT}"),
    ("{CRYPT}plain-looking", "{CRYPT}"),
    ("{crypt}$3$abc", "{CRYPT}"),
    ("{MD5-CRYPT}$6$abc$def", "{MD5-CRYPT}"),
    ("{BLF-CRYPT}$2x$04$" + "a" * 53, "{BLF-CRYPT}"),
    ("$7$abc$def", "$7$"),
])
def test_unknown_crypt_forms_are_labelled_as_found(stored: str, label: str) -> None:
    """A crypt form not verified here is UNKNOWN, labelled as the data spells it (for logs)."""
    scheme, _, found = identify_scheme(stored)
    assert (scheme, found) == (Scheme.UNKNOWN, label)


def test_a_recognised_value_keeps_its_body_and_label() -> None:
    """identify_scheme strips exactly the prefix and names it in upper case."""
    assert identify_scheme("{ssha}QUJD") == (Scheme.SSHA, "QUJD", "{SSHA}")
    assert identify_scheme("$6$s$h") == (Scheme.SHA512_CRYPT, "$6$s$h", "$6$")
    assert identify_scheme("{CRYPT}$6$s$h") == (Scheme.SHA512_CRYPT, "$6$s$h", "{CRYPT}")
    assert identify_scheme("hunter2") == (Scheme.PLAIN, "hunter2", "plaintext")


# --- NUL in a password -----------------------------------------------------------------------

@pytest.mark.parametrize(("stored", "scheme"), [
    (sha512_crypt.using(rounds=1000, salt=_SALT).hash("secret"), Scheme.SHA512_CRYPT),
    (sha256_crypt.using(rounds=1000, salt=_SALT).hash("secret"), Scheme.SHA256_CRYPT),
    (md5_crypt.using(salt="AbCdEfGh").hash("secret"), Scheme.MD5_CRYPT),
])
def test_a_password_with_nul_is_refused_by_sha_crypt_and_does_not_match(
        hasher: Hasher, stored: str, scheme: Scheme) -> None:
    """crypt(3) stops at NUL, so "secret\\0tail" must not pass for "secret"."""
    assert hasher.verify(stored, "secret\x00tail") == VerifyResult(
        False, scheme, "unusable-password")
    assert hasher.verify(stored, "secret").matched


def test_a_password_with_nul_is_refused_by_bcrypt_and_does_not_match(hasher: Hasher) -> None:
    """bcrypt too: a NUL-containing password is refused, not truncated into a match."""
    stored = _bcrypt("secret")
    assert hasher.verify(stored, "secret\x00tail") == VerifyResult(
        False, Scheme.BCRYPT, "unusable-password")
    assert hasher.verify(stored, "secret").matched


# --- cost ceilings, at the edge and one past it ---------------------------------------------

def test_the_legacy_ceilings_are_the_documented_ones() -> None:
    """docs/passwords.md promises rounds above 100000 and bcrypt cost above 14 are refused."""
    assert legacy.MAX_SHA_CRYPT_ROUNDS == 100_000
    assert legacy.MAX_BCRYPT_COST == 14
    assert legacy.BCRYPT_MAX_BYTES == 72


@pytest.mark.parametrize("scheme", [sha512_crypt, sha256_crypt])
def test_sha_crypt_at_the_rounds_ceiling_verifies(hasher: Hasher, scheme: type) -> None:
    """rounds=100000, exactly the ceiling, is verified (and matches)."""
    stored = scheme.using(rounds=100_000).hash(PASSWORD)  # type: ignore[attr-defined]
    assert "$rounds=100000$" in stored
    assert hasher.verify(stored, PASSWORD).matched


@pytest.mark.parametrize("scheme", [sha512_crypt, sha256_crypt])
@pytest.mark.parametrize("rounds", ["100001", "999999999", "9999999999"])
def test_sha_crypt_over_the_rounds_ceiling_is_refused_and_does_not_match(
        hasher: Hasher, scheme: type, rounds: str, caplog: pytest.LogCaptureFixture) -> None:
    """A SHA-crypt hash over the rounds ceiling is refused unverified and does not match,
    even for the right password; the error log names the scheme, not the hash."""
    real = scheme.using(rounds=1000, salt=_SALT).hash(PASSWORD)  # type: ignore[attr-defined]
    stored = real.replace("rounds=1000$", f"rounds={rounds}$")
    with caplog.at_level(logging.ERROR, "eximauthd.hashing"):
        result = hasher.verify(stored, PASSWORD)
    # The reason proves the refusal came first: passlib, had it run, would have answered
    # "mismatch" (the rounds no longer fit the digest) or "malformed-hash" (out of its range).
    named = Scheme.SHA512_CRYPT if scheme is sha512_crypt else Scheme.SHA256_CRYPT
    assert result == VerifyResult(False, named, "cost-over-ceiling")
    assert caplog.messages == [
        f"refusing stored {named.value} hash with rounds above 100000"]
    assert stored not in caplog.text


def test_bcrypt_cost_ceiling_is_inclusive(hasher: Hasher,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bcrypt hash of exactly the ceiling's cost verifies; one more is refused.

    The ceiling is lowered to 4 here (a real cost-14 hash takes seconds to make): the
    comparison is what is under test; its value is pinned above.
    """
    # legacy is the module whose verifier reads it (hashing only re-exports it).
    monkeypatch.setattr(legacy, "MAX_BCRYPT_COST", 4)
    assert hasher.verify(_bcrypt(cost=4), PASSWORD).matched
    result = hasher.verify(_bcrypt(cost=5), PASSWORD)
    assert (result.matched, result.reason) == (False, "cost-over-ceiling")


@pytest.mark.parametrize("cost", ["15", "31", "99"])
def test_bcrypt_over_the_cost_ceiling_is_refused_and_does_not_match(
        hasher: Hasher, cost: str, caplog: pytest.LogCaptureFixture) -> None:
    """A bcrypt value asking for more than cost 14 is refused before any work."""
    stored = _bcrypt(cost=4).replace("$04$", f"${cost}$", 1)
    with caplog.at_level(logging.ERROR, "eximauthd.hashing"):
        result = hasher.verify(stored, PASSWORD)
    assert result == VerifyResult(False, Scheme.BCRYPT, "cost-over-ceiling")
    assert caplog.messages == ["refusing stored bcrypt hash with cost above 14"]


@pytest.mark.parametrize("stored", [
    "$2b$04$" + "a" * 52, "$2b$04$" + "a" * 54, "$2b$4$" + "a" * 53, "$2b$04$" + "!" * 53,
])
def test_a_bcrypt_value_of_the_wrong_shape_is_malformed(
        hasher: Hasher, stored: str, caplog: pytest.LogCaptureFixture) -> None:
    """Anything but $2?$NN$ and exactly 53 characters of bcrypt's alphabet is refused, with
    one warning that names the scheme and not the value."""
    with caplog.at_level(logging.WARNING, "eximauthd.hashing"):
        result = hasher.verify(stored, PASSWORD)
    assert result == VerifyResult(False, Scheme.BCRYPT, "malformed-hash")
    assert caplog.messages == ["malformed stored bcrypt hash"]


def test_a_bcrypt_value_behind_a_stray_character_is_not_bcrypt(hasher: Hasher) -> None:
    """"x$2b$..." is not read as bcrypt (the MCF id must start the value): it does not match
    the password the bcrypt part was made of."""
    result = hasher.verify("x" + _bcrypt(), PASSWORD)
    assert not result.matched
    assert result.scheme is not Scheme.BCRYPT


@pytest.mark.parametrize("extra", ["x", ".", "=", "\n"])
def test_a_real_bcrypt_hash_with_a_character_appended_is_refused(hasher: Hasher,
                                                                 extra: str) -> None:
    """Trailing junk after the 53 characters is malformed, even for the right password."""
    result = hasher.verify(_bcrypt() + extra, PASSWORD)
    assert (result.matched, result.reason) == (False, "malformed-hash")


@pytest.mark.parametrize(("field", "ceiling"), [("t", 3), ("p", 2), ("m", 64)])
def test_argon2_ceilings_are_inclusive(field: str, ceiling: int) -> None:
    """An argon2 hash exactly at a configured ceiling verifies; one step over is refused
    and does not match, although the password is right."""
    limits = {"t": "max_time_cost", "p": "max_parallelism", "m": "max_memory_cost"}
    costs = {"t": "time_cost", "p": "parallelism", "m": "memory_cost"}
    strict = Hasher(replace(FAST_HASHING, **{limits[field]: ceiling}))
    base = replace(FAST_HASHING, memory_cost=32)
    at = Hasher(replace(base, **{costs[field]: ceiling})).hash(PASSWORD)
    over = Hasher(replace(base, **{costs[field]: ceiling + (8 if field == "m" else 1)}))
    assert strict.verify(at, PASSWORD).matched
    result = strict.verify(over.hash(PASSWORD), PASSWORD)
    assert (result.matched, result.reason) == (False, "cost-over-ceiling")


@pytest.mark.parametrize("scheme", [Scheme.ARGON2ID, Scheme.ARGON2I])
def test_an_argon2_hash_over_the_ceiling_is_refused_whole_and_logged_by_its_costs(
        scheme: Scheme, caplog: pytest.LogCaptureFixture) -> None:
    """The refusal names the scheme and the costs asked for, never the hash."""
    kind = argon2.Type.ID if scheme is Scheme.ARGON2ID else argon2.Type.I
    over = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1, hash_len=16,
                                 salt_len=16, type=kind).hash(PASSWORD)
    strict = Hasher(replace(FAST_HASHING, max_memory_cost=32))
    with caplog.at_level(logging.WARNING, "eximauthd.hashing"):
        result = strict.verify(over, PASSWORD)
    assert result == VerifyResult(False, scheme, "cost-over-ceiling")
    assert caplog.messages == [f"refusing stored {scheme.value} hash with m=64 t=1 p=1 above "
                               "the configured ceiling"]
    assert over not in caplog.text


@pytest.mark.parametrize(("stored", "scheme"), [
    ("$argon2id$v=19$m=8,t=1,p=1$c2FsdA", Scheme.ARGON2ID),       # no hash part
    ("$argon2id$v=19$m=x,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", Scheme.ARGON2ID),
    ("{ARGON2I}$argon2i$v=19$m=8,t=1$c2FsdHNhbHQ$aGFzaGhhc2g", Scheme.ARGON2I),
])
def test_an_argon2_value_whose_parameters_do_not_parse_is_malformed(
        hasher: Hasher, stored: str, scheme: Scheme, caplog: pytest.LogCaptureFixture) -> None:
    """Refused before any work, with one warning naming the scheme and not the value."""
    with caplog.at_level(logging.WARNING, "eximauthd.hashing"):
        result = hasher.verify(stored, PASSWORD)
    assert result == VerifyResult(False, scheme, "malformed-hash")
    assert caplog.messages == [f"malformed stored {scheme.value} hash"]


@pytest.mark.parametrize("kind", [argon2.Type.ID, argon2.Type.I])
def test_a_wrong_password_against_argon2_is_a_plain_mismatch(hasher: Hasher,
                                                             kind: argon2.Type) -> None:
    """No rehash asked for, the scheme named, nothing logged as a stored-data problem."""
    stored = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16,
                                   salt_len=16, type=kind).hash(PASSWORD)
    scheme = Scheme.ARGON2ID if kind is argon2.Type.ID else Scheme.ARGON2I
    assert hasher.verify(stored, PASSWORD + "!") == VerifyResult(False, scheme, "mismatch")


# --- SSHA -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("prefix", "digest"), [
    ("{SSHA}", hashlib.sha1), ("{SSHA256}", hashlib.sha256), ("{SSHA512}", hashlib.sha512),
])
def test_ssha_values_verify_with_their_salt(hasher: Hasher, prefix: str, digest: type) -> None:
    """A salted digest matches its password only, with any salt length, and asks for an
    argon2id upgrade."""
    scheme = identify_scheme(prefix)[0]
    for salt in (b"s", b"saltsalt", b"x" * 32):
        stored = prefix + _ssha(salt=salt, digest=digest)
        assert hasher.verify(stored, PASSWORD) == VerifyResult(True, scheme, "ok", True)
        assert hasher.verify(stored, PASSWORD + "x") == VerifyResult(False, scheme, "mismatch")


@pytest.mark.parametrize("damage", [
    pytest.param(lambda b: b[:4] + "*" + b[4:], id="stray-inside"),
    pytest.param(lambda b: b + "!", id="after-padding"),
    pytest.param(lambda b: " " + b, id="leading-blank"),
    pytest.param(lambda b: b[:4] + "\n" + b[4:], id="line-break"),
    pytest.param(lambda b: b.rstrip("="), id="no-padding"),
])
def test_ssha_with_stray_characters_is_refused_and_does_not_match(
        hasher: Hasher, damage: object, caplog: pytest.LogCaptureFixture) -> None:
    """Base64 is decoded strictly: a damaged {SSHA} value is malformed even for the right
    password (a lenient decoder would skip the junk and match); the log names the scheme
    only."""
    body = _ssha(salt=b"saltsalt9")  # 29 bytes: base64 with one "=" of padding
    assert body.endswith("=")
    assert not body.endswith("==")
    stored = "{SSHA}" + damage(body)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, "eximauthd.hashing"):
        result = hasher.verify(stored, PASSWORD)
    assert result == VerifyResult(False, Scheme.SSHA, "malformed-hash")
    assert caplog.messages == ["malformed stored ssha hash"]


@pytest.mark.parametrize(("prefix", "digest"), [
    ("{SSHA}", hashlib.sha1), ("{SSHA256}", hashlib.sha256), ("{SSHA512}", hashlib.sha512),
])
def test_ssha_of_exactly_a_digest_and_no_salt_is_malformed(
        hasher: Hasher, prefix: str, digest: type, caplog: pytest.LogCaptureFixture) -> None:
    """A bare digest (no salt) is refused, even when it is the password's; so is one byte
    less.  The log names the scheme only."""
    scheme = identify_scheme(prefix)[0]
    bare = digest(PASSWORD.encode()).digest()
    with caplog.at_level(logging.WARNING, "eximauthd.hashing"):
        for raw in (bare, bare[:-1]):
            result = hasher.verify(prefix + base64.b64encode(raw).decode(), PASSWORD)
            assert result == VerifyResult(False, scheme, "malformed-hash")
    assert caplog.messages == [f"malformed stored {scheme.value} hash (no salt)"] * 2


# --- plaintext ------------------------------------------------------------------------------

@pytest.mark.parametrize("stored", ["secret", "{PLAIN}secret", "{CLEARTEXT}secret",
                                    "{plain}secret"])
def test_plaintext_when_disabled_is_refused_and_does_not_match(stored: str) -> None:
    """With allow_plaintext = false the right plaintext password does not match."""
    strict = Hasher(replace(FAST_HASHING, allow_plaintext=False))
    result = strict.verify(stored, "secret")
    assert result == VerifyResult(False, Scheme.PLAIN, "plaintext-disabled")


@pytest.mark.parametrize("stored", ["secret", "{PLAIN}secret", "{CLEARTEXT}secret"])
def test_plaintext_when_allowed_matches_only_itself_and_asks_for_an_upgrade(
        hasher: Hasher, stored: str) -> None:
    """Allowed plaintext matches exactly, byte for byte, and is flagged for argon2id."""
    assert hasher.verify(stored, "secret") == VerifyResult(True, Scheme.PLAIN, "ok", True)
    assert hasher.verify(stored, "Secret") == VerifyResult(False, Scheme.PLAIN, "mismatch")
    assert not hasher.verify(stored, "secret ").matched


# --- the dummy verification -----------------------------------------------------------------

@pytest.mark.parametrize("password", ["", "x", "\x00", "ünï", "a" * 1024])
def test_verify_dummy_never_raises_and_returns_nothing(hasher: Hasher, password: str) -> None:
    """The unknown-user path spends an argon2 verification and reveals nothing."""
    assert hasher.verify_dummy(password) is None  # type: ignore[func-returns-value]


# That the dummy takes the library and the cost of a real verification: test_hashing_sodium.py.


def test_an_unexpected_error_in_a_verifier_is_a_malformed_hash(
        hasher: Hasher, caplog: pytest.LogCaptureFixture) -> None:
    """A verifier that raises is caught: the value is refused and the log names the scheme."""
    with caplog.at_level(logging.WARNING, "eximauthd.hashing"):
        result = hasher.verify("$6$rounds=5000$", PASSWORD)
    assert (result.matched, result.reason) == (False, "malformed-hash")
    assert "sha512-crypt" in caplog.text


# --- a verifier handed a value of another shape ---------------------------------------------
# identify_scheme gives the bare-value verifiers only values of their own shape, so through
# Hasher.verify these refusals cannot happen today; they are the verifiers' own fail-closed
# guard (a later change to identify_scheme must not turn a plaintext into a compared digest).

_MD5_SECRET = hashlib.md5(b"secret").hexdigest()  # noqa: S324  the legacy scheme under test
_NATIVE_SECRET = hashlib.sha1(hashlib.sha1(b"secret").digest()).hexdigest()  # noqa: S324


@pytest.mark.parametrize(("scheme", "body"), [
    (Scheme.MD5_HEX, "secret"),                        # a leftover plaintext
    (Scheme.MD5_HEX, _MD5_SECRET + " "),               # padded
    (Scheme.SHA1_HEX, _MD5_SECRET),                    # another digest's length
    (Scheme.SHA256_HEX, _MD5_SECRET),
    (Scheme.SHA512_HEX, "0x" + _MD5_SECRET),
    (Scheme.MYSQL_NATIVE, _NATIVE_SECRET.upper()),     # PASSWORD() without its "*"
    (Scheme.MYSQL_NATIVE, "secret"),
    (Scheme.MYSQL323_HEX, "0x" + mysql323("secret")),
    (Scheme.MYSQL323_HEX, "secret"),
    (Scheme.DES_CRYPT, "abNANd1rDfiN!"),              # not DES crypt's alphabet
    (Scheme.DES_CRYPT, "secret"),
], ids=lambda v: v.value if isinstance(v, Scheme) else str(len(v)))
def test_a_bare_verifier_refuses_a_value_of_another_shape(
        hasher: Hasher, scheme: Scheme, body: str, caplog: pytest.LogCaptureFixture) -> None:
    """Handed a value not of its scheme's shape, each bare-value verifier answers
    malformed-hash without comparing (not even "secret" to itself), and logs the scheme only."""
    with caplog.at_level(logging.WARNING, "eximauthd.hashing"):
        for password in ("secret", body):
            result = hasher._verify_scheme(scheme, body, scheme.value, password)
            assert result == VerifyResult(False, scheme, "malformed-hash")
    assert caplog.messages == [f"malformed stored {scheme.value} hash"] * 2
    assert body.strip() not in caplog.text


# --- hashing ----------------------------------------------------------------------------------

def test_argon2_failing_to_hash_is_a_hashing_error_without_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When argon2 itself refuses to hash (here a real argon2-cffi hasher whose salt is below
    argon2's minimum), hash() raises HashingError saying so, with no password and no chained
    argon2 error in it."""
    hasher = Hasher(FAST_HASHING)
    broken = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, salt_len=4)
    monkeypatch.setattr(hasher, "_ph", broken)
    with pytest.raises(HashingError) as raised:
        hasher.hash("hunter2-secret")
    assert str(raised.value) == "argon2id hashing failed"
    assert raised.value.__suppress_context__
    assert raised.value.__cause__ is None
