"""argon2id through libsodium (PyNaCl's bundled build), for the values it reads as argon2-cffi does.

libsodium picks its argon2 kernel at run time (SSSE3, AVX2, AVX-512F), where argon2-cffi's
wheels carry a libargon2 fixed when they were built (SSE2 at most); measured on a 2-core AVX-512
machine, libsodium's verification costs ~10% less CPU at m=19 MiB t=2 p=1 and ~1.7x less at
m=64 MiB t=3 p=4 (bench/bench_hashing.py, bench/RESULTS.md), and AUTH is bounded by argon2.

But the two libraries do not accept the same strings, and libsodium answers every failure, a
damaged string included, with the same error as a wrong password.  So
:mod:`~eximauthd.core.hashing` hands libsodium only values of :func:`verifies`'s shape, for
which both libraries compute the same answer (tests/core/test_hashing_sodium.py cross-checks
them), and everything else to argon2-cffi, whose refusals say why.  Measured with libsodium
1.0.18 (PyNaCl 1.5) and 1.0.20 (PyNaCl 1.6) against argon2-cffi 25.1:

* libsodium refuses a tag under 16 bytes (libargon2: 4), a value over 127 characters (PyNaCl's
  limit), a missing ``v=`` (libargon2 reads it as version 16) and any ``v=`` but 19;
* both refuse salts under 8 bytes, ``m < 8*p``, zero costs, leading zeros, non-canonical
  base64, padding, trailing bytes and extra fields, but only libargon2 says it is malformed.

New hashes come from libsodium only for what its ``str()`` writes: p=1, a 16-byte salt and a
32-byte tag (:func:`hashes`).  Pure: no I/O; the call releases the GIL (cffi does around C).
"""

from __future__ import annotations

import base64
import binascii
import re

import nacl.exceptions
import nacl.pwhash.argon2id

__all__ = ["hash_argon2id", "hashes", "verifies", "verify_argon2id"]

_PHC_RE = re.compile(
    r"\$argon2id\$v=19\$m=([1-9][0-9]{0,9}),t=([1-9][0-9]{0,9}),p=([1-9][0-9]{0,7})"
    r"\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")
# PyNaCl refuses longer strings (libsodium's crypto_pwhash_STRBYTES is 128 with the NUL).
_MAX_STRING = 127
_MIN_SALT = 8     # both libraries' ARGON2_MIN_SALT_LENGTH
_MIN_TAG = 16     # libsodium's ARGON2_MIN_OUTLEN (libargon2's is 4)
_MAX_U32 = 0xFFFFFFFF
_MAX_LANES = 0xFFFFFF
# What libsodium's str() writes besides m and t.
_STR_PARALLELISM = 1
_STR_SALT = 16
_STR_TAG = 32


def _canonical_b64(text: str) -> int | None:
    """The decoded length of unpadded base64 *text* if it is the only encoding of its bytes
    (libargon2 refuses non-zero spare bits); else None."""
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return len(raw) if base64.b64encode(raw).decode().rstrip("=") == text else None


def verifies(encoded: str) -> bool:
    """True when *encoded* (a ``$argon2id$`` PHC string, no ``{ARGON2ID}``) is of the shape for
    which libsodium's verification gives the answer argon2-cffi's does: version 19, canonical
    costs with ``m >= 8*p``, a salt of 8 bytes or more, a tag of 16 or more, at most 127
    characters.  Anything else is for argon2-cffi.  Pure, and no argon2 work."""
    if len(encoded) > _MAX_STRING:
        return False
    phc = _PHC_RE.fullmatch(encoded)
    if phc is None:
        return False
    memory, time_cost, lanes = (int(phc.group(i)) for i in (1, 2, 3))
    if memory > _MAX_U32 or time_cost > _MAX_U32 or lanes > _MAX_LANES or memory < 8 * lanes:
        return False
    salt, tag = _canonical_b64(phc.group(4)), _canonical_b64(phc.group(5))
    return salt is not None and salt >= _MIN_SALT and tag is not None and tag >= _MIN_TAG


def verify_argon2id(encoded: str, password: str) -> bool:
    """Whether *password* (UTF-8, NUL bytes and all, as argon2-cffi encodes it) is the one
    *encoded* was made of.  Only for values :func:`verifies` accepts, whose parameters the
    caller has checked against its ceiling: libsodium allocates what the string asks for."""
    try:
        return nacl.pwhash.argon2id.verify(encoded.encode("ascii"), password.encode("utf-8"))
    except nacl.exceptions.InvalidkeyError:
        return False


def hashes(memory_cost: int, time_cost: int, parallelism: int, salt_len: int,
           hash_len: int) -> bool:
    """True when libsodium's ``str()`` writes exactly these parameters (p=1, a 16-byte salt, a
    32-byte tag, costs within its limits)."""
    return ((parallelism, salt_len, hash_len) == (_STR_PARALLELISM, _STR_SALT, _STR_TAG)
            and nacl.pwhash.argon2id.MEMLIMIT_MIN <= memory_cost * 1024
            <= nacl.pwhash.argon2id.MEMLIMIT_MAX
            and nacl.pwhash.argon2id.OPSLIMIT_MIN <= time_cost
            <= nacl.pwhash.argon2id.OPSLIMIT_MAX)


def hash_argon2id(password: str, memory_cost: int, time_cost: int) -> str:
    """A new ``$argon2id$v=19$m=..,t=..,p=1$`` string of *password* (UTF-8).

    :raises RuntimeError: libsodium failed (out of memory); the text does not hold the password.
    """
    return nacl.pwhash.argon2id.str(password.encode("utf-8"), opslimit=time_cost,
                                    memlimit=memory_cost * 1024).decode("ascii")
