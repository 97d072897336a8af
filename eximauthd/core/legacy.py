"""The verifiers of the legacy schemes (crypt forms, bcrypt, salted and unsalted digests,
MySQL's ``PASSWORD()`` and ``OLD_PASSWORD()``) and the cost ceilings they enforce.

Read-only: nothing here makes a new hash; :class:`~eximauthd.core.hashing.Hasher` calls one
of these per scheme and rehashes a match with argon2id.  Each returns a
:class:`~eximauthd.core.schemes.VerifyResult` and logs stored-data problems naming the scheme
only, under the logger ``eximauthd.hashing`` like the rest of hashing (operators filter on it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
from collections.abc import Callable

import bcrypt
from passlib.hash import des_crypt, md5_crypt, sha256_crypt, sha512_crypt

from .schemes import Scheme, VerifyResult, _result
from .shapes import _DES_CRYPT_RE, _MYSQL_NATIVE_RE, hash_shape

__all__ = ["BCRYPT_MAX_BYTES", "MAX_BCRYPT_COST", "MAX_SHA_CRYPT_ROUNDS", "mysql323"]

_log = logging.getLogger("eximauthd.hashing")

# Cost ceilings for the legacy schemes, for the same reason as hashing.max_*: a stored value sets
# the work done per login, so a corrupt or planted row must not be able to ask for minutes of CPU.
MAX_SHA_CRYPT_ROUNDS = 100_000
MAX_BCRYPT_COST = 14
# crypt_blowfish (and so every bcrypt hash a mail system made) uses the first 72 bytes only.
BCRYPT_MAX_BYTES = 72

_SSHA_DIGESTS: dict[Scheme, Callable[[bytes], hashlib._Hash]] = {
    Scheme.SSHA: hashlib.sha1,
    Scheme.SSHA256: hashlib.sha256,
    Scheme.SSHA512: hashlib.sha512,
}
_HEX_DIGESTS: dict[Scheme, Callable[[bytes], hashlib._Hash]] = {
    Scheme.MD5_HEX: hashlib.md5,
    Scheme.SHA1_HEX: hashlib.sha1,
    Scheme.SHA256_HEX: hashlib.sha256,
    Scheme.SHA512_HEX: hashlib.sha512,
}


_SHA_CRYPT = {
    Scheme.MD5_CRYPT: md5_crypt,
    Scheme.SHA256_CRYPT: sha256_crypt,
    Scheme.SHA512_CRYPT: sha512_crypt,
}
_ROUNDS_RE = re.compile(r"\$[56]\$rounds=([0-9]{1,10})\$")


def _verify_sha_crypt(scheme: Scheme, body: str, password: str) -> VerifyResult:
    if "\x00" in password:
        # crypt(3) takes a C string: no stored crypt hash can be of a password with a NUL.
        return VerifyResult(False, scheme, "unusable-password")
    rounds = _ROUNDS_RE.match(body)
    if rounds is not None and int(rounds.group(1)) > MAX_SHA_CRYPT_ROUNDS:
        _log.error("refusing stored %s hash with rounds above %d", scheme.value,
                   MAX_SHA_CRYPT_ROUNDS)
        return VerifyResult(False, scheme, "cost-over-ceiling")
    ok = bool(_SHA_CRYPT[scheme].verify(password, body))
    return _result(ok, scheme, needs_rehash=True)


_BCRYPT_RE = re.compile(r"\$2[aby]\$([0-9][0-9])\$[./A-Za-z0-9]{53}")


def _verify_bcrypt(body: str, password: str) -> VerifyResult:
    match = _BCRYPT_RE.fullmatch(body)
    if match is None:
        _log.warning("malformed stored bcrypt hash")
        return VerifyResult(False, Scheme.BCRYPT, "malformed-hash")
    if int(match.group(1)) > MAX_BCRYPT_COST:
        _log.error("refusing stored bcrypt hash with cost above %d", MAX_BCRYPT_COST)
        return VerifyResult(False, Scheme.BCRYPT, "cost-over-ceiling")
    secret = password.encode()
    if b"\x00" in secret:
        return VerifyResult(False, Scheme.BCRYPT, "unusable-password")
    # bcrypt >= 5 raises on more than 72 bytes instead of truncating.  The stored hash was made
    # by crypt_blowfish, which used only the first 72 bytes, so that is what it can be checked
    # against; on success the full password is rehashed with argon2id, ending the truncation.
    ok = bcrypt.checkpw(secret[:BCRYPT_MAX_BYTES], body.encode("ascii"))
    return _result(ok, Scheme.BCRYPT, needs_rehash=True)


def _verify_ssha(scheme: Scheme, body: str, password: str) -> VerifyResult:
    digest = _SSHA_DIGESTS[scheme]
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        _log.warning("malformed stored %s hash", scheme.value)
        return VerifyResult(False, scheme, "malformed-hash")
    size = digest(b"").digest_size
    if len(raw) <= size:
        _log.warning("malformed stored %s hash (no salt)", scheme.value)
        return VerifyResult(False, scheme, "malformed-hash")
    expected, salt = raw[:size], raw[size:]
    ok = hmac.compare_digest(digest(password.encode() + salt).digest(), expected)
    return _result(ok, scheme, needs_rehash=True)


def _verify_hex_digest(scheme: Scheme, body: str, password: str) -> VerifyResult:
    # The configured scheme is trusted for the algorithm, not for the row: a value of another
    # shape (a leftover plaintext, a digest of another length) is refused, never compared.
    if hash_shape(body) != scheme.value:
        _log.warning("malformed stored %s hash", scheme.value)
        return VerifyResult(False, scheme, "malformed-hash")
    computed = _HEX_DIGESTS[scheme](password.encode()).hexdigest()
    ok = hmac.compare_digest(computed.encode(), body.lower().encode())
    return _result(ok, scheme, needs_rehash=True)


def _verify_mysql_native(body: str, password: str) -> VerifyResult:
    # MySQL's PASSWORD() / mysql_native_password: "*" + upper-hex SHA1(SHA1(password)).
    if not _MYSQL_NATIVE_RE.fullmatch(body):
        _log.warning("malformed stored mysql-native hash")
        return VerifyResult(False, Scheme.MYSQL_NATIVE, "malformed-hash")
    inner = hashlib.sha1(password.encode()).digest()  # noqa: S324 -- MySQL's format, verified
    computed = "*" + hashlib.sha1(inner).hexdigest().upper()  # noqa: S324 -- then rehashed
    ok = hmac.compare_digest(computed.encode(), body.upper().encode())
    return _result(ok, Scheme.MYSQL_NATIVE, needs_rehash=True)


def mysql323(password: str) -> str:
    """MySQL's ``OLD_PASSWORD()`` (before 4.1) of *password*'s UTF-8 bytes, as 16 hex digits.

    The server's ``hash_password()``: blanks and tabs are skipped, and only the low 31 bits of
    each half are kept, so Python's unbounded integers (cut to 64 bits to stay small) give the
    same result as C's wrapping ``ulong``.  Checked against MariaDB 10.11 in the tests.  Pure.
    """
    nr, add, nr2 = 1345345333, 7, 0x12345671
    mask = (1 << 64) - 1
    for byte in password.encode():
        if byte in (0x20, 0x09):
            continue
        nr ^= ((((nr & 63) + add) * byte) + (nr << 8)) & mask
        nr2 = (nr2 + ((nr2 << 8) ^ nr)) & mask
        add += byte
    return f"{nr & 0x7FFFFFFF:08x}{nr2 & 0x7FFFFFFF:08x}"


def _verify_mysql323(body: str, password: str) -> VerifyResult:
    # A 62-bit non-cryptographic hash that ignores blanks: colliding passwords are cheap to
    # find, so a match is rehashed at once (to what was typed) like every legacy scheme.
    if hash_shape(body) != Scheme.MYSQL323_HEX.value:
        _log.warning("malformed stored mysql323-hex hash")
        return VerifyResult(False, Scheme.MYSQL323_HEX, "malformed-hash")
    ok = hmac.compare_digest(mysql323(password).encode(), body.lower().encode())
    return _result(ok, Scheme.MYSQL323_HEX, needs_rehash=True)


def _verify_des_crypt(body: str, password: str) -> VerifyResult:
    if not _DES_CRYPT_RE.fullmatch(body):
        _log.warning("malformed stored des-crypt hash")
        return VerifyResult(False, Scheme.DES_CRYPT, "malformed-hash")
    if "\x00" in password:
        # crypt(3) takes a C string: no stored crypt hash can be of a password with a NUL.
        return VerifyResult(False, Scheme.DES_CRYPT, "unusable-password")
    # DES crypt uses the first 8 characters only, so any password sharing them matches; on
    # success the full password is rehashed with argon2id, ending that.
    ok = bool(des_crypt.verify(password, body))
    return _result(ok, Scheme.DES_CRYPT, needs_rehash=True)
