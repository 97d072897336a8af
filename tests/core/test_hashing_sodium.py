"""argon2id through libsodium: same answers as argon2-cffi, the same refusals, the same ceilings.

Real libraries on both sides: argon2-cffi (``argon2``) and PyNaCl's libsodium (``nacl``).  The
matrix is mostly at tiny memory costs (8-64 KiB) so that it stays fast; a few cases use OWASP's
19 MiB.  Thread scaling (libsodium releases the GIL) is shown by bench/bench_hashing.py, not
asserted here: no timing in tests.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import argon2
import argon2.low_level
import nacl.pwhash.argon2id
import pytest

from eximauthd.core import sodium
from eximauthd.core.hashing import ARGON2ID_PREFIX, Hasher, Scheme, VerifyResult
from eximauthd.settings import HashingConfig

from ..support import FAST_HASHING

PASSWORD = "correct horse"
WRONG = "correct horsf"
# What libsodium's str() writes: the parameters under which Hasher hashes with libsodium.
SODIUM_SHAPED = replace(FAST_HASHING, hash_len=32, salt_len=16, parallelism=1)
# Verifies; configured with a time cost no stored value here has, so every match asks for a
# rehash and the expected results need not depend on the case.
VERIFIER = Hasher(replace(FAST_HASHING, time_cost=4))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _cffi(password: str, m: int, t: int, p: int, hash_len: int = 32,
          salt_len: int = 16) -> str:
    return argon2.PasswordHasher(time_cost=t, memory_cost=m, parallelism=p, hash_len=hash_len,
                                 salt_len=salt_len, type=argon2.Type.ID).hash(password)


def _libsodium(password: str, m: int, t: int, hash_len: int = 32) -> str:
    """A PHC string of libsodium's own argon2id output (p=1, its 16-byte salt), any tag length:
    str() writes only 32-byte tags, so the tag comes from its raw KDF."""
    salt = bytes(range(16))
    tag = nacl.pwhash.argon2id.kdf(hash_len, password.encode(), salt, opslimit=t,
                                   memlimit=m * 1024)
    return f"$argon2id$v=19$m={m},t={t},p=1${_b64(salt)}${_b64(tag)}"


def _cffi_verifies(stored: str, password: str) -> bool:
    try:
        return argon2.PasswordHasher().verify(stored, password)
    except argon2.exceptions.VerifyMismatchError:
        return False


# --- the two libraries agree -----------------------------------------------------------------

_MATRIX = [
    pytest.param(max(m, 8 * p), t, p, hash_len, salt_len,
                 id=f"m{max(m, 8 * p)}-t{t}-p{p}-tag{hash_len}-salt{salt_len}")
    for m in (8, 64) for t in (1, 2, 3) for p in (1, 2, 4)
    for hash_len in (16, 32) for salt_len in (8, 16)
] + [
    pytest.param(19456, t, p, 32, 16, id=f"m19456-t{t}-p{p}-tag32-salt16")
    for t, p in ((1, 1), (2, 1), (3, 1), (1, 4))
]


@pytest.mark.parametrize(("m", "t", "p", "hash_len", "salt_len"), _MATRIX)
def test_argon2_cffi_hashes_verify_with_libsodium(m: int, t: int, p: int, hash_len: int,
                                                  salt_len: int) -> None:
    """A hash argon2-cffi made (any lanes, tag and salt length of the matrix) is of libsodium's
    shape; libsodium accepts its password only, and so does Hasher, with argon2id's reasons."""
    stored = _cffi(PASSWORD, m, t, p, hash_len, salt_len)
    assert sodium.verifies(stored)
    assert sodium.verify_argon2id(stored, PASSWORD)
    assert not sodium.verify_argon2id(stored, WRONG)
    assert VERIFIER.verify(stored, PASSWORD) == VerifyResult(True, Scheme.ARGON2ID, "ok", True)
    assert VERIFIER.verify(stored, WRONG) == VerifyResult(False, Scheme.ARGON2ID, "mismatch")


@pytest.mark.parametrize("hash_len", [16, 32])
@pytest.mark.parametrize(("m", "t"), [(8, 1), (8, 2), (64, 3), (19456, 2)])
def test_libsodium_hashes_verify_with_argon2_cffi(m: int, t: int, hash_len: int) -> None:
    """libsodium's argon2id output is what argon2-cffi computes: its password verifies there,
    a wrong one does not."""
    stored = _libsodium(PASSWORD, m, t, hash_len)
    assert _cffi_verifies(stored, PASSWORD)
    assert not _cffi_verifies(stored, WRONG)


@pytest.mark.parametrize(("m", "t"), [(8, 1), (64, 2), (19456, 2)])
def test_hasher_hashes_with_libsodium_what_argon2_cffi_verifies(m: int, t: int) -> None:
    """With libsodium's own parameters (p=1, 16-byte salt, 32-byte tag) the Hasher hashes with
    libsodium; the hash carries exactly the configured parameters (no rehash), and argon2-cffi
    accepts its password only."""
    hasher = Hasher(replace(SODIUM_SHAPED, memory_cost=m, time_cost=t))
    assert hasher._sodium_hash
    stored = hasher.hash(PASSWORD)
    params = argon2.extract_parameters(stored)
    assert (params.type, params.memory_cost, params.time_cost, params.parallelism,
            params.salt_len, params.hash_len) == (argon2.Type.ID, m, t, 1, 16, 32)
    assert not hasher.needs_rehash(stored)
    assert _cffi_verifies(stored, PASSWORD)
    assert not _cffi_verifies(stored, WRONG)
    assert hasher.verify(stored, PASSWORD) == VerifyResult(True, Scheme.ARGON2ID, "ok", False)


@pytest.mark.parametrize(("p", "salt_len", "hash_len"), [
    (2, 16, 32), (1, 32, 32), (1, 16, 16), (1, 16, 64), (4, 64, 64),
])
def test_other_parameters_hash_with_argon2_cffi(p: int, salt_len: int, hash_len: int) -> None:
    """libsodium writes only p=1 with a 16-byte salt and a 32-byte tag; any other configured
    shape is hashed by argon2-cffi, with exactly the configured parameters."""
    config = replace(FAST_HASHING, memory_cost=32, parallelism=p, salt_len=salt_len,
                     hash_len=hash_len)
    assert not sodium.hashes(32, 1, p, salt_len, hash_len)
    hasher = Hasher(config)
    assert not hasher._sodium_hash
    stored = hasher.hash(PASSWORD)
    params = argon2.extract_parameters(stored)
    assert (params.parallelism, params.salt_len, params.hash_len) == (p, salt_len, hash_len)
    assert not hasher.needs_rehash(stored)
    assert hasher.verify(stored, PASSWORD).matched


_U32 = 2**32 - 1  # libsodium's largest memory (in KiB, on 64 bits) and time cost


@pytest.mark.parametrize(("m", "t", "expected"), [
    (8, 1, True), (19456, 2, True), (7, 1, False), (8, 0, False),
    (_U32, 1, True), (_U32 + 1, 1, False), (8, _U32, True), (8, _U32 + 1, False),
])
def test_libsodium_hashes_only_within_its_limits(m: int, t: int, expected: bool) -> None:
    """Outside libsodium's costs (8 KiB to 4 TiB of memory, time 1 to 2**32-1) it is not
    asked to hash; exactly at either end it is (deciding only, nothing is hashed here)."""
    assert sodium.hashes(m, t, 1, 16, 32) is expected


# --- shapes libsodium does not read as argon2-cffi does go to argon2-cffi --------------------

def _raw_cffi(m: int, t: int, p: int, salt: bytes, hash_len: int, *,
              version: str = "v=19$") -> str:
    tag = argon2.low_level.hash_secret_raw(PASSWORD.encode(), salt, t, m, p, hash_len,
                                           argon2.Type.ID)
    return f"$argon2id${version}m={m},t={t},p={p}${_b64(salt)}${_b64(tag)}"


@pytest.mark.parametrize("stored", [
    pytest.param(_raw_cffi(8, 1, 1, b"saltsalt", 4), id="tag4"),
    pytest.param(_raw_cffi(8, 1, 1, b"saltsalt", 15), id="tag15"),
    pytest.param(_raw_cffi(8, 1, 1, b"s" * 64, 32), id="over-127-characters"),
    pytest.param(_raw_cffi(8, 1, 1, b"saltsaltsaltsalt", 64), id="tag64-salt16"),
    pytest.param(_raw_cffi(8, 1, 1, b"s" * 42, 33), id="128-characters"),
])
def test_shapes_libsodium_refuses_verify_with_argon2_cffi(stored: str) -> None:
    """A tag under 16 bytes or a string over 127 characters: libsodium would refuse the right
    password, so argon2-cffi verifies them, and the answers are still right."""
    assert not sodium.verifies(stored)
    assert VERIFIER.verify(stored, PASSWORD) == VerifyResult(True, Scheme.ARGON2ID, "ok", True)
    assert VERIFIER.verify(stored, WRONG) == VerifyResult(False, Scheme.ARGON2ID, "mismatch")


def test_the_longest_value_libsodium_takes_is_127_characters() -> None:
    """127 characters is PyNaCl's limit, and at it libsodium still answers right."""
    stored = _raw_cffi(8, 1, 1, b"s" * 42, 32)
    assert len(stored) == 127
    assert sodium.verifies(stored)
    assert sodium.verify_argon2id(stored, PASSWORD)
    assert not sodium.verify_argon2id(stored, WRONG)
    assert len(_raw_cffi(8, 1, 1, b"s" * 42, 33)) == 128


def test_a_value_without_a_version_is_argon2_cffis_version_16() -> None:
    """No ``v=`` is version 16 to libargon2, an error to libsodium: argon2-cffi decides (it
    computes version 16, so a version-19 tag does not match)."""
    stored = _raw_cffi(8, 1, 1, b"saltsalt", 32, version="")
    assert not sodium.verifies(stored)
    assert not sodium.verifies(stored.replace("$m=", "$v=16$m="))
    result = VERIFIER.verify(stored, PASSWORD)
    assert result == VerifyResult(False, Scheme.ARGON2ID, "mismatch")


_GOOD = _raw_cffi(8, 1, 1, b"saltsaltsaltsalt", 32)
_SALT_B64 = _GOOD.split("$")[4]
_TAG_B64 = _GOOD.split("$")[5]
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _flip_spare_bit(text: str) -> str:
    return text[:-1] + _ALPHABET[_ALPHABET.index(text[-1]) ^ 1]


@pytest.mark.parametrize("stored", [
    pytest.param(_GOOD.replace("m=8", "m=08"), id="leading-zero-m"),
    pytest.param(_GOOD.replace("t=1", "t=01"), id="leading-zero-t"),
    pytest.param(_GOOD.replace("t=1", "t=0"), id="t0"),
    pytest.param(_GOOD.replace("p=1", "p=0"), id="p0"),
    pytest.param(_GOOD.replace("m=8", "m=0"), id="m0"),
    pytest.param(_GOOD.replace("p=1", "p=2"), id="m-under-8p"),
    pytest.param(_GOOD.replace("m=8,t=1", "t=1,m=8"), id="order"),
    pytest.param(_GOOD.replace("p=1$", "p=1,keyid=AAAA$"), id="keyid"),
    pytest.param(_GOOD + "=", id="padding"),
    pytest.param(_GOOD + "\n", id="trailing-newline"),
    pytest.param(_GOOD + " ", id="trailing-blank"),
    pytest.param(_GOOD.replace(_TAG_B64, _flip_spare_bit(_TAG_B64)), id="non-canonical-tag"),
    pytest.param(_GOOD.replace(_SALT_B64, _flip_spare_bit(_SALT_B64)), id="non-canonical-salt"),
    pytest.param(_GOOD.replace(_SALT_B64, _b64(b"salt7by")), id="salt-7-bytes"),
    pytest.param(_GOOD.replace(_TAG_B64, ""), id="no-tag"),
    pytest.param(_GOOD.replace(_TAG_B64, "!" * 43), id="tag-not-base64"),
    pytest.param(_GOOD + "AA", id="tag-length-1-mod-4"),
])
def test_malformed_values_keep_argon2_cffis_reason(
        stored: str, caplog: pytest.LogCaptureFixture) -> None:
    """Values both libraries refuse are not of libsodium's shape (libsodium would call them a
    wrong password): argon2-cffi refuses them as malformed-hash, for the right password too,
    and the log names the scheme only."""
    assert sodium.verifies(_GOOD)
    assert not sodium.verifies(stored)
    with caplog.at_level(logging.WARNING, "eximauthd.hashing"):
        for password in (PASSWORD, WRONG):
            result = VERIFIER.verify(stored, password)
            assert result == VerifyResult(False, Scheme.ARGON2ID, "malformed-hash")
    assert caplog.messages == ["malformed stored argon2id hash"] * 2


def test_argon2i_stays_with_argon2_cffi() -> None:
    """libsodium takes only argon2id: an argon2i value verifies through argon2-cffi and asks
    for an argon2id upgrade."""
    stored = argon2.PasswordHasher(time_cost=3, memory_cost=8, parallelism=1,
                                   type=argon2.Type.I).hash(PASSWORD)
    assert not sodium.verifies(stored)
    assert VERIFIER.verify(stored, PASSWORD) == VerifyResult(True, Scheme.ARGON2I, "ok", True)
    assert VERIFIER.verify(stored, WRONG) == VerifyResult(False, Scheme.ARGON2I, "mismatch")


@pytest.mark.parametrize(("params", "expected"), [
    ("m=4294967295,t=1,p=1", True), ("m=4294967296,t=1,p=1", False),
    ("m=8,t=4294967295,p=1", True), ("m=8,t=4294967296,p=1", False),
    ("m=134217728,t=1,p=16777215", True), ("m=134217728,t=1,p=16777216", False),
    ("m=16,t=1,p=2", True), ("m=15,t=1,p=2", False),
])
def test_the_costs_libsodium_takes_are_argon2s_ranges(params: str, expected: bool) -> None:
    """Costs within argon2's 32-bit ranges (lanes: 24 bits) and m >= 8p are libsodium's; one
    past is argon2-cffi's to refuse.  Shape only: nothing is computed here."""
    assert sodium.verifies(_GOOD.replace("m=8,t=1,p=1", params)) is expected


# --- the ceiling comes first on the libsodium path too -------------------------------------

@pytest.mark.parametrize("params", [
    "m=4194304,t=1,p=1",    # 4 GiB: libsodium would allocate it
    "m=8,t=100000,p=1",
    "m=1024,t=1,p=64",
])
def test_a_libsodium_shaped_hash_over_the_ceiling_is_refused_unverified(
        params: str, caplog: pytest.LogCaptureFixture) -> None:
    """A value libsodium would take, with a cost over the ceiling, is refused from its parsed
    parameters before either library is called: cost-over-ceiling, said in the log."""
    hostile = _GOOD.replace("m=8,t=1,p=1", params)
    assert sodium.verifies(hostile)
    with caplog.at_level(logging.ERROR, "eximauthd.hashing"):
        result = Hasher(FAST_HASHING).verify(ARGON2ID_PREFIX + hostile, PASSWORD)
    assert result == VerifyResult(False, Scheme.ARGON2ID, "cost-over-ceiling")
    assert caplog.messages == [
        f"refusing stored argon2id hash with {params.replace(',', ' ')} above the configured "
        "ceiling"]


# --- passwords: NUL, long, not UTF-8 encodable; the {ARGON2ID} prefix ----------------------

@pytest.mark.parametrize("make", [
    pytest.param(lambda pw: _cffi(pw, 8, 1, 1, 32, 16), id="libsodium-path"),
    pytest.param(lambda pw: _raw_cffi_of(pw, 12), id="argon2-cffi-path"),
])
@pytest.mark.parametrize(("password", "others"), [
    pytest.param("a\x00b", ["a", "a\x00c", "a\x00", "a\x00b\x00"], id="nul"),
    pytest.param("\x00", ["", "\x00\x00"], id="only-nul"),
    pytest.param("x" * 1023 + "y", ["x" * 1023, "x" * 1024, "x" * 1023 + "y" + "z"],
                 id="1024-bytes"),
    pytest.param("ü" * 512, ["ü" * 511, "u" * 512], id="1024-bytes-utf8"),
])
def test_passwords_are_hashed_as_all_their_bytes_on_both_paths(
        make: Callable[[str], str], password: str, others: list[str]) -> None:
    """argon2 hashes the whole UTF-8 encoding, NUL included, on either library: the password
    matches, and no prefix, extension or other NUL placement does."""
    stored = make(password)
    assert VERIFIER.verify(stored, password).matched
    for other in others:
        assert VERIFIER.verify(stored, other) == VerifyResult(False, Scheme.ARGON2ID, "mismatch")


def _raw_cffi_of(password: str, hash_len: int) -> str:
    salt = b"saltsalt"
    tag = argon2.low_level.hash_secret_raw(password.encode(), salt, 1, 8, 1, hash_len,
                                           argon2.Type.ID)
    stored = f"$argon2id$v=19$m=8,t=1,p=1${_b64(salt)}${_b64(tag)}"
    assert not sodium.verifies(stored)
    return stored


def test_a_nul_password_hashed_by_libsodium_verifies_with_argon2_cffi() -> None:
    """libsodium hashes a NUL-containing password whole, as argon2-cffi reads it."""
    stored = Hasher(SODIUM_SHAPED).hash("a\x00b")
    assert _cffi_verifies(stored, "a\x00b")
    assert not _cffi_verifies(stored, "a")


@pytest.mark.parametrize("stored", [
    pytest.param(_cffi(PASSWORD, 8, 1, 1, 32, 16), id="libsodium-path"),
    pytest.param(_raw_cffi(8, 1, 1, b"saltsalt", 12), id="argon2-cffi-path"),
])
def test_a_password_utf8_cannot_encode_is_the_same_refusal_on_both_paths(
        stored: str, caplog: pytest.LogCaptureFixture) -> None:
    """A lone surrogate has no UTF-8 form: refused as malformed-hash either way (the error is
    caught, never raised), and the log names the error type, not the password."""
    with caplog.at_level(logging.WARNING, "eximauthd.hashing"):
        result = VERIFIER.verify(stored, "pw\udc80")
    assert result == VerifyResult(False, Scheme.ARGON2ID, "malformed-hash")
    assert caplog.messages == ["stored argon2id value could not be verified (UnicodeEncodeError)"]


def test_the_dovecot_prefix_is_written_and_read_on_the_libsodium_path() -> None:
    """{ARGON2ID} plus libsodium's string: written with dovecot_prefix, verified by us, and
    the part after the prefix is a hash argon2-cffi accepts (what Dovecot reads)."""
    hasher = Hasher(replace(SODIUM_SHAPED, dovecot_prefix=True))
    stored = hasher.hash(PASSWORD)
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$")
    assert sodium.verifies(stored.removeprefix(ARGON2ID_PREFIX))
    assert hasher.verify(stored, PASSWORD) == VerifyResult(True, Scheme.ARGON2ID, "ok", False)
    assert hasher.verify(stored, WRONG) == VerifyResult(False, Scheme.ARGON2ID, "mismatch")
    assert _cffi_verifies(stored.removeprefix(ARGON2ID_PREFIX), PASSWORD)
    lower = "{argon2id}" + _cffi(PASSWORD, 16, 1, 2, 16, 8)
    assert hasher.verify(lower, PASSWORD).matched


# --- the dummy verification takes the path a real one takes ------------------------------------

@pytest.mark.parametrize("config", [
    pytest.param(replace(SODIUM_SHAPED, memory_cost=1024, time_cost=3), id="libsodium-hashes"),
    pytest.param(replace(FAST_HASHING, memory_cost=1024, time_cost=3, parallelism=2),
                 id="argon2-cffi-hashes-libsodium-verifies"),
    pytest.param(replace(FAST_HASHING, memory_cost=1024, time_cost=3, hash_len=64,
                         salt_len=64), id="argon2-cffi-both"),
])
def test_verify_dummy_takes_the_library_and_cost_of_a_real_verification(
        config: HashingConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dummy verifies the password against a hash of the configured parameters with the
    library a real account's hash of those parameters is verified with (both still run)."""
    hasher = Hasher(config)
    calls: list[tuple[str, str, str]] = []
    real_sodium, real_cffi = sodium.verify_argon2id, hasher._ph

    class Recording:
        """argon2-cffi's own hasher (its class has slots), verifications noted."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real_cffi, name)

        def verify(self, stored: str, password: str) -> bool:
            calls.append(("argon2-cffi", stored, password))
            return real_cffi.verify(stored, password)

    def through_sodium(stored: str, password: str) -> bool:
        calls.append(("libsodium", stored, password))
        return real_sodium(stored, password)

    monkeypatch.setattr(sodium, "verify_argon2id", through_sodium)
    monkeypatch.setattr(hasher, "_ph", Recording())
    hasher.verify_dummy("guess")
    assert hasher.verify(hasher.hash(PASSWORD), "guess").reason == "mismatch"
    (dummy_library, dummy, dummy_password), (real_library, real, _) = calls
    assert (dummy_library, dummy_password) == (real_library, "guess")
    assert argon2.extract_parameters(dummy) == argon2.extract_parameters(real)
    c = hasher.config
    assert (argon2.extract_parameters(dummy).memory_cost,
            argon2.extract_parameters(dummy).time_cost) == (c.memory_cost, c.time_cost)


def test_canonical_base64_is_accepted_whatever_its_last_character() -> None:
    """A salt whose base64 ends in any letter (X, say) is read as canonical: the check compares
    the text with the re-encoding stripped of "=" only."""
    salt = bytes(17) + bytes([23])  # 18 bytes: 24 characters, the last is base64's 23rd, X
    stored = argon2.low_level.hash_secret(PASSWORD.encode(), salt, time_cost=1, memory_cost=8,
                                          parallelism=1, hash_len=32,
                                          type=argon2.Type.ID).decode()
    assert stored.split("$")[4].endswith("X")
    assert sodium.verifies(stored)


# --- [hashing] verify_with ------------------------------------------------------------------

@pytest.fixture
def sodium_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every libsodium verification from now on (the real one runs: a spy, not a stand-in)."""
    calls: list[str] = []
    real = sodium.verify_argon2id

    def spy(encoded: str, password: str) -> bool:
        calls.append(encoded)
        return real(encoded, password)

    monkeypatch.setattr(sodium, "verify_argon2id", spy)
    return calls


@pytest.mark.parametrize("verify_with", ["auto", "libsodium"])
def test_libsodium_verifies_what_it_can_unless_told_otherwise(
        sodium_calls: list[str], verify_with: str) -> None:
    """"auto" outside the service (the CLI, the library) is libsodium, as before it existed."""
    hasher = Hasher(replace(FAST_HASHING, verify_with=verify_with))
    stored = _cffi(PASSWORD, 8, 1, 1)
    assert hasher.verify(stored, PASSWORD).matched
    assert not hasher.verify(stored, WRONG).matched
    assert sodium_calls == [stored, stored]


@pytest.mark.parametrize("make", [
    pytest.param(lambda pw: _cffi(pw, 8, 1, 1), id="sodium-shaped"),
    pytest.param(lambda pw: _libsodium(pw, 8, 2), id="written-by-libsodium"),
    pytest.param(lambda pw: _cffi(pw, 16, 2, 2, 16, 8), id="argon2-cffi-shaped"),
    pytest.param(lambda pw: ARGON2ID_PREFIX + _cffi(pw, 8, 1, 1), id="dovecot-prefix"),
])
def test_verify_with_argon2_cffi_gives_the_same_answers_without_libsodium(
        sodium_calls: list[str], make: Callable[[str], str]) -> None:
    stored = make(PASSWORD)
    reference = Hasher(FAST_HASHING)
    sodium_calls.clear()
    hasher = Hasher(replace(FAST_HASHING, verify_with="argon2-cffi"))
    for password in (PASSWORD, WRONG, "", "\x00", PASSWORD + "\x00"):
        assert hasher.verify(stored, password) == reference.verify(stored, password)
    assert hasher.verify(stored, PASSWORD).matched
    assert len(sodium_calls) == (5 if sodium.verifies(stored.removeprefix(ARGON2ID_PREFIX))
                                 else 0)  # the reference's calls only
