"""What every part of password hashing speaks: the schemes, a verification's result, and the
grammar of a stored value that names its scheme (``{SCHEME}`` prefix, ``$id$`` modular crypt).

The base of :mod:`~eximauthd.core.hashing`, :mod:`~eximauthd.core.shapes` and
:mod:`~eximauthd.core.legacy`: it imports none of them, so they can all import it without a
cycle.  Pure.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["Scheme", "VerifyResult"]


class Scheme(enum.Enum):
    """A stored value's scheme as recognised by :func:`~eximauthd.core.hashing.identify_scheme`."""

    ARGON2ID = "argon2id"
    ARGON2I = "argon2i"
    MD5_CRYPT = "md5-crypt"
    SHA256_CRYPT = "sha256-crypt"
    SHA512_CRYPT = "sha512-crypt"
    BCRYPT = "bcrypt"
    SSHA = "ssha"
    SSHA256 = "ssha256"
    SSHA512 = "ssha512"
    # Unsalted legacy hashes, only ever taken as such when [legacy] password_scheme names them
    # (or, for DES crypt, behind {CRYPT}).  The values are also the password_scheme names.
    MD5_HEX = "md5-hex"
    SHA1_HEX = "sha1-hex"
    SHA256_HEX = "sha256-hex"
    SHA512_HEX = "sha512-hex"
    MYSQL_NATIVE = "mysql-native"
    MYSQL323_HEX = "mysql323-hex"
    DES_CRYPT = "des-crypt"
    PLAIN = "plain"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :meth:`~eximauthd.core.hashing.Hasher.verify`.

    ``reason`` is one of ``ok``, ``mismatch``, ``no-password-set``, ``unknown-scheme``,
    ``malformed-hash``, ``cost-over-ceiling``, ``plaintext-disabled``, ``unusable-password``.

    ``looks_like`` is set on an ``unknown-scheme`` refusal of a bare value shaped like a hash:
    the kind it looks like (``md5-hex``, ``des-crypt``, ...), never the value.  Not logged here,
    so that the caller can say it once per account instead of once per attempt.
    """

    matched: bool
    scheme: Scheme
    reason: str
    needs_rehash: bool = False
    looks_like: str = ""


_PREFIX_RE = re.compile(r"\{([A-Za-z0-9._-]{1,32})\}")
_MCF_RE = re.compile(r"\$([A-Za-z0-9-]{1,16})\$")


def _result(ok: bool, scheme: Scheme, *, needs_rehash: bool) -> VerifyResult:
    if ok:
        return VerifyResult(True, scheme, "ok", needs_rehash=needs_rehash)
    return VerifyResult(False, scheme, "mismatch")
