"""Hashing: argon2id for new passwords, legacy schemes verified against other tools' output."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import argon2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from passlib.hash import des_crypt

from eximauthd.core.hashing import (
    Calibration,
    Hasher,
    Scheme,
    VerifyResult,
    bare_scheme,
    calibrate,
    hash_shape,
    identify_scheme,
    mysql323,
)
from eximauthd.errors import ConfigError
from eximauthd.settings import LEGACY_PASSWORD_SCHEMES, HashingConfig

from ..hash_shapes import PHPASS, PLAINTEXTS, SHAPED, shaped_ids
from ..support import FAST_HASHING

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "legacy_vectors.json").read_text("utf-8")
)


def _vector_id(vector: dict[str, Any]) -> str:
    return str(vector["id"])


class TestKnownVectors:
    """Every scheme verifies hashes made by doveadm, openssl and mkpasswd."""

    @pytest.mark.parametrize("vector", VECTORS, ids=_vector_id)
    def test_right_password_matches(self, hasher: Hasher, vector: dict[str, Any]) -> None:
        """The password the tool hashed is accepted and flagged for an argon2id upgrade."""
        result = hasher.verify(vector["stored"], vector["password"])
        assert result.matched, result
        assert result.reason == "ok"
        assert result.needs_rehash  # none of them is argon2id with our parameters

    @pytest.mark.parametrize("vector", VECTORS, ids=_vector_id)
    def test_wrong_password_is_refused(self, hasher: Hasher, vector: dict[str, Any]) -> None:
        """A different password never matches (past 72 bytes bcrypt cannot tell, see below)."""
        password = vector["password"]
        candidates = ["X" + password[1:], "secret2", "x"]
        if len(password.encode()) <= 72:
            candidates += [password + "x", password[:-1]]
        for wrong in candidates:
            result = hasher.verify(vector["stored"], wrong)
            assert not result.matched
            assert result.reason == "mismatch"

    @pytest.mark.parametrize("vector", [v for v in VECTORS if v["id"].endswith("long80")],
                             ids=_vector_id)
    def test_bcrypt_uses_first_72_bytes_like_crypt_blowfish(
            self, hasher: Hasher, vector: dict[str, Any]) -> None:
        """bcrypt >= 5 raises past 72 bytes; we verify what crypt_blowfish hashed instead."""
        password = vector["password"]
        assert len(password.encode()) == 80
        assert hasher.verify(vector["stored"], password).matched
        assert hasher.verify(vector["stored"], password[:72]).matched
        assert not hasher.verify(vector["stored"], password[:71]).matched

    def test_vectors_cover_every_scheme_the_issue_lists(self) -> None:
        """The fixture file holds each scheme required, from at least two tools overall."""
        found = {identify_scheme(v["stored"])[0] for v in VECTORS}
        assert found >= {Scheme.PLAIN, Scheme.MD5_CRYPT, Scheme.SHA256_CRYPT,
                         Scheme.SHA512_CRYPT, Scheme.BCRYPT, Scheme.SSHA, Scheme.SSHA256,
                         Scheme.SSHA512, Scheme.ARGON2ID, Scheme.ARGON2I}
        prefixes = {v["stored"].split("}")[0] + "}" for v in VECTORS if v["stored"][0] == "{"}
        assert {"{PLAIN}", "{SHA512-CRYPT}", "{BLF-CRYPT}", "{SSHA}", "{SSHA512}",
                "{ARGON2ID}"} <= prefixes
        bare = {v["stored"][:4] for v in VECTORS if v["stored"][0] == "$"}
        assert {"$1$", "$5$", "$6$", "$2y$", "$2b$"} <= {b[:3] if b[2] == "$" else b
                                                        for b in bare}


class TestArgon2id:
    """New hashes are argon2id with the configured parameters."""

    def test_hash_uses_pinned_parameters(self) -> None:
        """The default config yields OWASP's m=19 MiB, t=2, p=1, not the library's default."""
        encoded = Hasher().hash("correct horse")
        params = argon2.extract_parameters(encoded)
        assert (params.type, params.memory_cost, params.time_cost, params.parallelism) == (
            argon2.Type.ID, 19456, 2, 1)

    @pytest.mark.parametrize(("hash_len", "salt_len"), [(16, 16), (24, 12), (32, 8)])
    def test_hash_uses_the_configured_tag_and_salt_lengths(self, hash_len: int,
                                                           salt_len: int) -> None:
        """The stored tag and salt are as long as configured, not argon2-cffi's defaults."""
        config = replace(FAST_HASHING, hash_len=hash_len, salt_len=salt_len)
        encoded = Hasher(config).hash("correct horse")
        params = argon2.extract_parameters(encoded)
        assert (params.hash_len, params.salt_len) == (hash_len, salt_len)
        assert not Hasher(config).needs_rehash(encoded)

    def test_round_trip_and_no_rehash(self, hasher: Hasher) -> None:
        """A fresh hash verifies and needs no rehash."""
        encoded = hasher.hash("pässwörd ✓")
        assert encoded.startswith("$argon2id$v=19$m=8,t=1,p=1$")
        result = hasher.verify(encoded, "pässwörd ✓")
        assert result.matched
        assert not result.needs_rehash
        assert not hasher.verify(encoded, "passwörd ✓").matched

    def test_dovecot_prefix_is_written_and_read(self) -> None:
        """With dovecot_prefix the output carries {ARGON2ID}, which Dovecot and we both read."""
        prefixed = Hasher(replace(FAST_HASHING, dovecot_prefix=True))
        encoded = prefixed.hash("secret")
        assert encoded.startswith("{ARGON2ID}$argon2id$")
        assert prefixed.verify(encoded, "secret").matched
        assert not prefixed.needs_rehash(encoded)

    @pytest.mark.parametrize("stored", [
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ",         # no hash part
        "{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1",
        "$argon2id$v=19$m=eight,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
    ])
    def test_a_malformed_argon2id_value_needs_rehash(self, hasher: Hasher, stored: str) -> None:
        """A value argon2 cannot parse is never taken as current: it needs a new hash (and
        does not verify)."""
        assert hasher.needs_rehash(stored)
        assert not hasher.verify(stored, "secret").matched

    def test_other_parameters_need_rehash(self, hasher: Hasher) -> None:
        """A hash made with other parameters verifies but asks to be upgraded."""
        other = Hasher(replace(FAST_HASHING, time_cost=2)).hash("secret")
        result = hasher.verify(other, "secret")
        assert result.matched
        assert result.needs_rehash

    @pytest.mark.parametrize(("field", "value"), [
        ("m", "4194304"),   # 4 GiB: must never be allocated
        ("t", "100000"),
        ("p", "64"),
    ])
    def test_hash_over_ceiling_is_refused_unverified(
            self, hasher: Hasher, field: str, value: str,
            caplog: pytest.LogCaptureFixture) -> None:
        """A stored hash asking for more than the ceiling is refused, and said so in the log."""
        encoded = hasher.hash("secret")
        params = encoded.split("$")[3]  # "m=8,t=1,p=1"
        patched = params.replace(
            {"m": "m=8", "t": "t=1", "p": "p=1"}[field], f"{field}={value}")
        hostile = encoded.replace(params, patched)
        with caplog.at_level(logging.ERROR, "eximauthd.hashing"):
            result = hasher.verify(hostile, "secret")
        assert (result.matched, result.reason) == (False, "cost-over-ceiling")
        assert "ceiling" in caplog.text

    def test_dovecot_high_cost_vector_obeys_a_lower_ceiling(self) -> None:
        """doveadm -r 3 makes m=256 MiB: refused when the ceiling is 64 MiB."""
        vector = next(v for v in VECTORS if v["id"] == "dove-argon2id-r3-secret")
        low = Hasher(replace(FAST_HASHING, max_memory_cost=65536))
        assert low.verify(vector["stored"], vector["password"]).reason == "cost-over-ceiling"


class TestRefusals:
    """Unknown and malformed stored values are refused, logged, and never raise."""

    @pytest.mark.parametrize(("stored", "label"), [
        ("{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=", "{SHA}"),       # unsalted SHA1: not supported
        ("{MD5}Xr4ilOzQ4PCOq3aQ0qbuaQ==", "{MD5}"),
        ("{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69", "{PLAIN-MD5}"),
        ("{CRYPT}abNANd1rDfiN!", "{CRYPT}"),                  # not DES crypt's alphabet
        ("{NOPE}secret", "{NOPE}"),
        ("$y$j9T$salt$hash", "$y$"),                          # yescrypt
        ("$argon2d$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "$argon2d$"),
        ("{SHA512-CRYPT}$1$abc$def", "{SHA512-CRYPT}"),       # prefix and body disagree
    ])
    def test_unknown_scheme_is_refused_loudly(self, hasher: Hasher, stored: str, label: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
        """Never guessed to be plaintext: typing the stored string itself must not work; the
        error names the scheme as found, never the value."""
        with caplog.at_level(logging.ERROR, "eximauthd.hashing"):
            result = hasher.verify(stored, stored)
        assert result == VerifyResult(False, Scheme.UNKNOWN, "unknown-scheme")
        assert caplog.messages == [f"refusing stored password with unsupported scheme {label}"]
        assert not hasher.verify(stored, stored.rsplit("}", maxsplit=1)[-1]).matched

    def test_a_bare_hash_under_auto_is_refused_quietly_with_its_kind(
            self, hasher: Hasher, caplog: pytest.LogCaptureFixture) -> None:
        """The caller reports it once per account, so verify logs nothing and says the kind."""
        stored = hashlib.md5(b"password").hexdigest()  # noqa: S324 -- a stored legacy value
        with caplog.at_level(logging.DEBUG, "eximauthd.hashing"):
            result = hasher.verify(stored, stored)
        assert result == VerifyResult(False, Scheme.UNKNOWN, "unknown-scheme",
                                      looks_like="md5-hex")
        assert caplog.messages == []

    @pytest.mark.parametrize("stored", [
        "$argon2id$v=19$m=8,t=1,p=1$!!!$???",
        "$argon2id$garbage",
        "{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$c2FsdA",
        "$6$salt",
        "$6$rounds=abc$salt$hash",
        "$1$",
        "$2y$05$short",
        "$2b$99$" + "a" * 53,
        "{SSHA}not base64!",
        "{SSHA}AAAA",                               # shorter than a SHA-1 digest
        "{SSHA512}" + "A" * 86 + "==",              # a bare digest, no salt
        "{BLF-CRYPT}$2y$05$" + "/" * 52,
    ])
    def test_malformed_hash_is_no_with_reason(self, hasher: Hasher, stored: str) -> None:
        """A corrupt row is a refusal with a reason, not an exception."""
        result = hasher.verify(stored, "secret")
        assert not result.matched
        assert result.reason in {"malformed-hash", "cost-over-ceiling", "unknown-scheme"}

    def test_sha_crypt_rounds_over_ceiling_are_refused(self, hasher: Hasher) -> None:
        """$6$rounds=999999999$ would cost minutes: refused before any work."""
        result = hasher.verify("$6$rounds=999999999$salt$" + "a" * 86, "secret")
        assert result.reason == "cost-over-ceiling"

    @pytest.mark.parametrize("stored", ["", None])
    def test_no_stored_password_is_no(self, hasher: Hasher, stored: str | None) -> None:
        """An empty or NULL column never matches, not even an empty password."""
        refused = VerifyResult(False, Scheme.UNKNOWN, "no-password-set")
        assert hasher.verify(stored, "") == refused
        assert hasher.verify(stored, "x") == refused

    def test_plaintext_can_be_disabled(self) -> None:
        """allow_plaintext = false refuses bare and {PLAIN} values."""
        strict = Hasher(replace(FAST_HASHING, allow_plaintext=False))
        assert strict.verify("secret", "secret").reason == "plaintext-disabled"
        assert strict.verify("{PLAIN}secret", "secret").reason == "plaintext-disabled"

    def test_nul_in_password_never_matches_crypt_hashes(self, hasher: Hasher) -> None:
        """crypt(3) stops at NUL; a password with NUL cannot be what a crypt hash holds."""
        vector = next(v for v in VECTORS if v["id"] == "openssl-sha512crypt-secret")
        assert hasher.verify(vector["stored"], "secret\x00tail").reason == "unusable-password"
        bcrypt_vector = next(v for v in VECTORS if v["id"] == "mkpasswd-bcrypt-secret")
        assert not hasher.verify(bcrypt_vector["stored"], "secret\x00").matched


@settings(max_examples=300, deadline=None)
@given(stored=st.one_of(st.text(max_size=300), st.sampled_from([v["stored"] for v in VECTORS])),
       password=st.text(max_size=200))
def test_verify_never_raises_on_any_input(stored: str, password: str) -> None:
    """Whatever a row holds and whatever a client sends, verify answers instead of raising."""
    hasher = Hasher(FAST_HASHING)
    result = hasher.verify(stored, password)
    if result.matched:
        # Only plaintext can match an arbitrary stored text, and then only itself.
        assert identify_scheme(stored)[0] is Scheme.PLAIN or stored in {
            v["stored"] for v in VECTORS}


def test_verify_result_holds_no_secret(hasher: Hasher) -> None:
    """The result object carries no password or hash, so logging it is safe."""
    encoded = hasher.hash("hunter2-secret")
    text = repr(hasher.verify(encoded, "hunter2-secret")) + repr(hasher)
    assert "hunter2" not in text
    assert encoded not in text
    assert encoded.split("$")[-1] not in text


def test_calibrate_returns_measured_fits() -> None:
    """Calibration keeps only parameter sets whose measured time is under the target."""
    ticks = iter(range(10_000))

    def clock() -> float:
        return next(ticks) * 0.001  # every verification "takes" 1 ms

    fits = calibrate(0.5, max_memory_cost=19456 * 2, samples=1, clock=clock)
    assert [f.memory_cost for f in fits] == [19456, 38912]
    assert all(f.time_cost == 10 and f.seconds < 0.5 for f in fits)
    assert calibrate(0.0005, max_memory_cost=19456, samples=1, clock=clock) == []


class _ScriptedClock:
    """An injectable clock under which the n-th verification takes the n-th scripted duration
    (an hour once the script is used up).  It starts far from zero, as perf_counter does;
    durations are binary fractions, so end - start gives them back exactly."""

    def __init__(self, durations: list[float]) -> None:
        self._durations = iter(durations)
        self._now = 1024.0
        self._reads = 0

    def __call__(self) -> float:
        self._reads += 1
        if self._reads % 2 == 0:  # every second read ends a verification
            self._now += next(self._durations, 3600.0)
        return self._now


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """(m, t, p) of every hash calibration verifies: argon2-cffi's own PasswordHasher,
    with the parameters of each verified hash noted."""
    seen: list[tuple[int, int, int]] = []

    class Recording(argon2.PasswordHasher):
        def verify(self, encoded: str | bytes, password: str | bytes) -> bool:
            text = encoded if isinstance(encoded, str) else encoded.decode()
            params = argon2.extract_parameters(text)
            seen.append((params.memory_cost, params.time_cost, params.parallelism))
            return super().verify(encoded, password)  # the real verification still runs

    monkeypatch.setattr(argon2, "PasswordHasher", Recording)
    return seen


def test_calibrate_measures_from_time_cost_one_and_keeps_a_time_equal_to_the_target(
        measured: list[tuple[int, int, int]]) -> None:
    """t=1 is tried first; a median exactly at the target still fits, the next one over it
    ends the step; the fit and the hashes measured have the parameters asked for (p=1 by
    default)."""
    clock = _ScriptedClock([0.5, 0.75])
    fits = calibrate(0.5, max_memory_cost=19456, samples=1, clock=clock)
    assert fits == [Calibration(19456, 1, 1, 0.5)]
    assert measured == [(19456, 1, 1), (19456, 2, 1)]


def test_calibrate_keeps_the_median_of_three_samples_by_default(
        measured: list[tuple[int, int, int]]) -> None:
    """Three verifications per parameter set by default, and their median is what counts:
    one slow sample of three does not drop t=1, two of three stop at t=2."""
    clock = _ScriptedClock([0.75, 0.25, 0.25, 0.75, 0.75, 0.25])
    fits = calibrate(0.5, max_memory_cost=19456, parallelism=2, clock=clock)
    assert fits == [Calibration(19456, 1, 2, 0.25)]
    assert measured == [(19456, 1, 2)] * 3 + [(19456, 2, 2)] * 3


def test_calibrate_takes_the_middle_of_an_odd_number_of_samples(
        measured: list[tuple[int, int, int]]) -> None:
    """Of five samples the third smallest is the median, neither the second nor the mean."""
    clock = _ScriptedClock([0.75, 0.125, 0.5, 0.25, 0.75])
    fits = calibrate(0.5, max_memory_cost=19456, samples=5, clock=clock)
    assert fits == [Calibration(19456, 1, 1, 0.5)]
    assert len(measured) == 10


def test_default_config_is_owasp_minimum() -> None:
    """Defaults are pinned, independent of the argon2-cffi release."""
    config = HashingConfig()
    assert (config.memory_cost, config.time_cost, config.parallelism) == (19456, 2, 1)


# --- bare values shaped like a hash (issue 12, item 4: pass-the-hash) ---------------------------

def _sha(name: str, password: str) -> str:
    return hashlib.new(name, password.encode()).hexdigest()


# (password_scheme that verifies it, stored value, the password it stands for).  Made by
# hashlib, by passlib, by glibc's crypt(3) and by MariaDB 10.11's own functions:
#   perl -e 'print crypt("secret", "ab")'                       -> abNANd1rDfiNc
#   mariadb -e "SELECT PASSWORD('secret'), MD5('secret')"       -> *14E655..., 5ebe22...
#   mariadb --default-character-set=utf8mb4 -e "SELECT OLD_PASSWORD('secret'),
#     OLD_PASSWORD('pässwörd'), OLD_PASSWORD('hunter2'), OLD_PASSWORD('a b\tc'),
#     OLD_PASSWORD('abc')"
#   -> 428567f408994404 4abeaead409936b7 17687fae14ce0509 7cd2b5942be28759 7cd2b5942be28759
BARE_HASHES: list[tuple[str, str, str]] = [
    ("md5-hex", "5ebe2294ecd0e0f08eab7690d2a6ee69", "secret"),          # MariaDB MD5()
    ("md5-hex", _sha("md5", "pässwörd").upper(), "pässwörd"),          # upper-case hex
    ("sha1-hex", "e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4", "secret"),  # MariaDB SHA1()
    ("sha256-hex", "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
     "secret"),                                                          # MariaDB SHA2(, 256)
    ("sha512-hex", _sha("sha512", "correct horse ✓"), "correct horse ✓"),
    ("mysql-native", "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7", "secret"),  # PASSWORD()
    ("mysql-native", "*14e65567abdb5135d0cfd9a70b3032c179a49ee7", "secret"),  # lower-cased
    ("mysql323-hex", "428567f408994404", "secret"),                      # OLD_PASSWORD()
    ("mysql323-hex", "4abeaead409936b7", "pässwörd"),                    # ... over utf8mb4
    ("mysql323-hex", "17687FAE14CE0509", "hunter2"),                     # upper-cased
    ("des-crypt", "abNANd1rDfiNc", "secret"),                            # glibc crypt(3)
    ("des-crypt", des_crypt.using(salt="Zz").hash("hunter2"), "hunter2"),
]
# Shapes refused under "auto" that no password_scheme verifies.
UNVERIFIABLE_SHAPES = [("sha224-hex", _sha("sha224", "secret")),
                       ("sha384-hex", _sha("sha384", "secret").upper())]


def _ids(case: tuple[str, ...]) -> str:
    return f"{case[0]}-{case[1][:6]}"


class TestBareHashShapes:
    """A bare stored hash never logs in as itself; a named scheme verifies the real password."""

    @pytest.mark.parametrize("case", BARE_HASHES + [(k, v, "secret") for k, v in
                                                    UNVERIFIABLE_SHAPES], ids=_ids)
    def test_auto_refuses_the_hash_as_its_own_password(
            self, hasher: Hasher, case: tuple[str, str, str],
            caplog: pytest.LogCaptureFixture) -> None:
        """Under "auto" neither the hash nor the real password logs in: unknown-scheme, with the
        kind it looks like and without logging the value."""
        kind, stored, password = case
        with caplog.at_level(logging.DEBUG, "eximauthd"):
            for attempt in (stored, password, stored.lower(), stored.upper()):
                result = hasher.verify(stored, attempt)
                assert (result.matched, result.reason) == (False, "unknown-scheme")
                assert result.looks_like == kind
        assert stored not in caplog.text
        assert identify_scheme(stored) == (Scheme.UNKNOWN, stored, kind)

    @pytest.mark.parametrize("case", BARE_HASHES, ids=_ids)
    def test_named_scheme_verifies_the_real_password_only(self, case: tuple[str, str, str]
                                                          ) -> None:
        """password_scheme = KIND: the real password matches and asks for argon2id; the hash,
        a wrong password and the hash in the other case do not."""
        kind, stored, password = case
        hasher = Hasher(FAST_HASHING, password_scheme=kind)
        result = hasher.verify(stored, password)
        assert (result.matched, result.reason, result.needs_rehash) == (True, "ok", True)
        assert result.scheme.value == kind
        for wrong in (stored, stored.swapcase(), "X" + password[1:], "secret2"):
            assert not hasher.verify(stored, wrong).matched, wrong

    @pytest.mark.parametrize("kind", [k for k in LEGACY_PASSWORD_SCHEMES
                                      if k not in {"auto", "plain"}])
    def test_named_scheme_refuses_values_of_another_shape(self, kind: str) -> None:
        """Under a hash scheme a leftover plaintext or another kind of hash is refused, never
        compared as text; another kind of hash says what it looks like."""
        hasher = Hasher(FAST_HASHING, password_scheme=kind)
        for stored in ("hunter2", "5ebe2294ecd0e0f08eab7690d2a6ee6", "*" + "g" * 40):
            result = hasher.verify(stored, stored)
            assert (result.matched, result.reason, result.looks_like) == (
                False, "unknown-scheme", "")
        for other, stored, password in BARE_HASHES:
            if other != kind:
                result = hasher.verify(stored, password)
                assert (result.matched, result.reason, result.looks_like) == (
                    False, "unknown-scheme", other)
                assert not hasher.verify(stored, stored).matched

    @pytest.mark.parametrize("bare", [Scheme.PLAIN, None])
    def test_a_value_read_as_plaintext_is_labelled_plaintext(self, bare: Scheme | None) -> None:
        """Under ``plain`` (any bare value) and under ``auto`` (a value of no hash shape) the
        label, which log lines use instead of the value, is the word "plaintext"."""
        assert identify_scheme("hunter2", bare) == (Scheme.PLAIN, "hunter2", "plaintext")

    def test_plain_takes_a_hash_shaped_value_as_plaintext(self) -> None:
        """password_scheme = "plain": the admin said the column is plaintext, so it is."""
        hasher = Hasher(FAST_HASHING, password_scheme="plain")
        for _, stored, password in BARE_HASHES:
            assert hasher.verify(stored, stored).reason == "ok"
            assert not hasher.verify(stored, password).matched

    @pytest.mark.parametrize("mode", LEGACY_PASSWORD_SCHEMES)
    def test_prefixed_and_crypt_values_are_read_alike_in_every_mode(self, mode: str) -> None:
        """{SCHEME} and $id$ values mean the same whatever password_scheme says."""
        hasher = Hasher(FAST_HASHING, password_scheme=mode)
        for vector in VECTORS:
            if vector["stored"][0] in "{$":
                assert hasher.verify(vector["stored"], vector["password"]).matched, vector["id"]
        assert hasher.verify("{CRYPT}abNANd1rDfiNc", "secret").scheme is Scheme.DES_CRYPT
        assert hasher.verify("{PLAIN}5ebe2294ecd0e0f08eab7690d2a6ee69",
                             "5ebe2294ecd0e0f08eab7690d2a6ee69").matched

    @pytest.mark.parametrize("mode", LEGACY_PASSWORD_SCHEMES)
    @pytest.mark.parametrize("stored", [
        "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=",         # Dovecot: base64 SHA-1
        "{SHA1}5en6G6MezRroT3XKqkdPOmY/BfQ=",
        "{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=",
        "{SHA512}vSsar3708Jvp9Szi2NWZZ02Bqp1qRCFpbcTZPdBhnWgs5WtNZKnvCXdhztmeD2cmW192CF5bDufKRpayrW/isg==",
        "{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69",  # Dovecot: hex MD5
        "{LDAP-MD5}Xr4ilOzQ4PCOq3aQ0qbuaQ==",           # Dovecot: base64 MD5
        "{MD5}Xr4ilOzQ4PCOq3aQ0qbuaQ==",                # Dovecot: MD5-crypt, malformed here
        "{PLAIN.B64}c2VjcmV0",                          # Dovecot: encoded plaintext
        "$2x$05$" + "a" * 53,                           # crypt_blowfish's buggy-8bit marker
        "$y$j9T$abc$def",
    ])
    def test_other_hash_forms_are_never_plaintext(self, mode: str, stored: str) -> None:
        """Dovecot's unsalted-digest prefixes and unverified crypt ids are refused in every
        mode: neither the stored text nor its body logs in."""
        hasher = Hasher(FAST_HASHING, password_scheme=mode)
        body = stored.split("}", 1)[-1]
        for attempt in (stored, body, "secret"):
            result = hasher.verify(stored, attempt)
            assert (result.matched, result.reason) == (False, "unknown-scheme")

    def test_des_crypt_refuses_nul_and_reads_eight_characters(self) -> None:
        """crypt(3) takes a C string (NUL refused) and DES reads 8 characters, so a longer
        password sharing them matches; the upgrade then stores what was typed."""
        hasher = Hasher(FAST_HASHING, password_scheme="des-crypt")
        assert hasher.verify("abNANd1rDfiNc", "secret\x00") == VerifyResult(
            False, Scheme.DES_CRYPT, "unusable-password")
        stored = des_crypt.using(salt="ab").hash("12345678")
        assert hasher.verify(stored, "12345678-and-more").matched
        assert not hasher.verify(stored, "1234567").matched

    # Not named after the server: scripts/mutation deselects tests by "-k 'not mariadb'", which
    # took this one (it was named test_mysql323_is_mariadbs_...) out of every mutation run.
    def test_mysql323_skips_only_blanks_and_tabs_like_old_password(self) -> None:
        """OLD_PASSWORD() skips blanks and tabs (MariaDB says 'a b\\tc' = 'abc') and nothing
        else: '!' and a newline count; a match is rehashed, so the stored argon2id is then of
        what was typed."""
        assert mysql323("a b\tc") == mysql323("abc") == "7cd2b5942be28759"
        # mariadb -e "SELECT OLD_PASSWORD('a!b'), OLD_PASSWORD('ab'), OLD_PASSWORD('a\nb')"
        assert (mysql323("a!b"), mysql323("ab"), mysql323("a\nb")) == (
            "7cf0deba2be401cc", "077ba8cb491e16c5", "7ce98de92be480c6")
        hasher = Hasher(FAST_HASHING, password_scheme="mysql323-hex")
        result = hasher.verify("7cd2b5942be28759", "a b c")
        assert (result.matched, result.needs_rehash) == (True, True)
        for stored in ("7cd2b5942be2875", "7cd2b5942be28759 ", "0x7cd2b5942be28759"):
            assert not hasher.verify(stored, "abc").matched, stored

    def test_hex_schemes_take_nul_like_mysql(self) -> None:
        """MD5()/SHA1() hash bytes, NUL included: no refusal needed, just the digest."""
        hasher = Hasher(FAST_HASHING, password_scheme="md5-hex")
        assert hasher.verify(_sha("md5", "a\x00b"), "a\x00b").matched
        assert not hasher.verify(_sha("md5", "a\x00b"), "a").matched

    @pytest.mark.parametrize(("value", "kind"), [
        ("0" * 32, "md5-hex"), ("F" * 40, "sha1-hex"), ("aB" * 28, "sha224-hex"),
        ("9" * 64, "sha256-hex"), ("e" * 96, "sha384-hex"), ("1" * 128, "sha512-hex"),
        ("./0123456789A", "des-crypt"), ("*" + "A" * 40, "mysql-native"),
        ("0" * 31, None), ("0" * 33, None), ("g" * 30, None), ("./0123456789", None),
        ("./0123456789A!", None), ("*" + "A" * 39, None), ("hunter2", None), ("", None),
        ("0" * 31 + "\n", None), (" " + "0" * 32, "md5-hex (padded)"),
        ("0" * 16, "mysql323-hex"), ("0" * 15, None), ("0" * 34, "hex-digest"),
        ("0x" + "0" * 16, "0x-hex"), ("0x" + "0" * 15, None),
        ("g" * 32, "base64-salted-digest"),  # 24 bytes: SHA-1 + 4-byte salt, as {SSHA} writes
        ("g" * 22 + "==", "base64-digest"), ("g" * 20 + "==", None),
        ("_" + "." * 19, "bsdi-crypt"), ("_" + "." * 18, None), ("_" + "." * 19 + "!", None),
        ("SHA1$x", "django"), ("pbkdf2_sha1$", "django"), ("pbkdf2:x", "werkzeug"),
        ("0" * 32 + ":s", "salted-hex"), ("0" * 31 + ":s", None), ("0" * 32 + ":", "hex-encoded"),
        # The catch-alls: 16 characters at least, 16 bytes of base64 (22 characters, "=" not
        # counted) or of base32 (26 characters, with a digit).
        ("2b$04$" + "a" * 10, "crypt-without-dollar"), ("2b$04$" + "a" * 9, None),
        ("Zz9" + "y" * 19, "base64-encoded"), ("Zz9" + "y" * 18, None),
        ("Zz9" + "y" * 18 + "=", None), ("Zz9" + "y" * 18 + "X", "base64-encoded"),
        ("ABCDEFGHIJKLMNOPQRSTUVWXY2", "base32-encoded"), ("ABCDEFGHIJKLMNOPQRSTUVWX2", None),
        ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", None),
    ])
    def test_hash_shape(self, value: str, kind: str | None) -> None:
        """Exact lengths and alphabets, nothing looser or stricter."""
        assert hash_shape(value) == kind
        assert (identify_scheme(value)[0] is Scheme.PLAIN) is (kind is None)

    @pytest.mark.parametrize("stored", [
        "{SSHA}QUJD", "{SSHA512}" + "QUJD" * 30, "$6$s$h",
        "$6$rounds=1000$AbCdEfGhIjKlMnOp$" + "a" * 86,
    ])
    def test_only_a_padded_crypt_or_prefixed_value_is_called_padded(self, stored: str) -> None:
        """hash_shape says "(padded)" of a $id$ or {SCHEME} value only when blanks were
        around it: the same value without them is no padded anything."""
        assert hash_shape(" " + stored + "\n") == "crypt-or-prefixed (padded)"
        assert not (hash_shape(stored) or "").endswith(" (padded)")

    @pytest.mark.parametrize("case", SHAPED, ids=shaped_ids)
    def test_auto_refuses_every_known_hash_shape_as_its_own_password(
            self, hasher: Hasher, case: tuple[str, str],
            caplog: pytest.LogCaptureFixture) -> None:
        """Under "auto" a bare OLD_PASSWORD(), base64 digest, unprefixed SSHA, Django, Werkzeug,
        Joomla, 0x-hex, padded or BSDi value is unknown-scheme with its kind, never plaintext."""
        kind, stored = case
        with caplog.at_level(logging.DEBUG, "eximauthd"):
            for attempt in (stored, stored.strip(), "secret"):
                result = hasher.verify(stored, attempt)
                assert (result.matched, result.reason) == (False, "unknown-scheme")
                assert result.looks_like == kind
        assert identify_scheme(stored) == (Scheme.UNKNOWN, stored, kind)
        assert stored.strip() not in caplog.text

    @pytest.mark.parametrize("stored", PHPASS)
    def test_auto_refuses_phpass_as_an_unknown_crypt_id(self, hasher: Hasher,
                                                        stored: str) -> None:
        """phpass's $P$/$H$ is a $id$ string of no supported id: refused, never plaintext."""
        for mode in LEGACY_PASSWORD_SCHEMES:
            result = Hasher(FAST_HASHING, password_scheme=mode).verify(stored, stored)
            assert (result.matched, result.reason) == (False, "unknown-scheme"), mode

    @pytest.mark.parametrize("password", PLAINTEXTS)
    def test_auto_still_verifies_realistic_plaintexts(self, hasher: Hasher,
                                                      password: str) -> None:
        """15 hex digits, short base64-looking words, passphrases with $ and : stay plaintext."""
        assert hash_shape(password) is None
        result = hasher.verify(password, password)
        assert (result.matched, result.scheme, result.needs_rehash) == (True, Scheme.PLAIN, True)
        assert not hasher.verify(password, password + "x").matched

    @pytest.mark.parametrize("case", SHAPED, ids=shaped_ids)
    def test_plain_is_the_escape_hatch_for_shaped_plaintexts(self, case: tuple[str, str]
                                                             ) -> None:
        """password_scheme = "plain" takes any shaped value as the plaintext it then is."""
        _, stored = case
        assert Hasher(FAST_HASHING, password_scheme="plain").verify(stored, stored).matched

    def test_scheme_names_agree_with_the_configuration(self) -> None:
        """Every value config accepts maps to a scheme here, and nothing else is accepted."""
        assert {bare_scheme(name) for name in LEGACY_PASSWORD_SCHEMES} == {
            None, Scheme.PLAIN, Scheme.MD5_HEX, Scheme.SHA1_HEX, Scheme.SHA256_HEX,
            Scheme.SHA512_HEX, Scheme.MYSQL_NATIVE, Scheme.MYSQL323_HEX, Scheme.DES_CRYPT}
        with pytest.raises(ConfigError, match=r"legacy\.password_scheme"):
            Hasher(FAST_HASHING, password_scheme="MD5")

    def test_an_unknown_scheme_name_is_quoted_shortened_in_the_error(self) -> None:
        """The error names the first 40 characters of an unknown name: enough to recognise a
        typo, never a whole pasted secret."""
        with pytest.raises(ConfigError) as caught:
            bare_scheme("m" * 39 + "X" + "tail-never-shown")
        assert str(caught.value) == (
            "legacy.password_scheme: unknown scheme '" + "m" * 39 + "X'")
