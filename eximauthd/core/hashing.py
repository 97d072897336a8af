"""Password hashes: argon2id for everything new, read-only support for legacy schemes.

:class:`Hasher` never raises for a wrong password or a bad stored value: :meth:`Hasher.verify`
returns a :class:`VerifyResult` whose ``reason`` says why it did not match, and logs stored-data
problems (unknown scheme, malformed hash, cost over the ceiling) naming the scheme only.

Recognised stored formats (Dovecot's ``{SCHEME}`` prefixes and bare modular-crypt strings):

========================================  ===================================================
``$argon2id$``, ``{ARGON2ID}``            argon2-cffi (the current scheme)
``$argon2i$``, ``{ARGON2I}``              argon2-cffi, upgraded on the next login
``$1$``, ``{MD5-CRYPT}``                  MD5-crypt (libpass)
``$5$``, ``{SHA256-CRYPT}``               SHA256-crypt (libpass)
``$6$``, ``{SHA512-CRYPT}``               SHA512-crypt (libpass)
``$2a$ $2b$ $2y$``, ``{BLF-CRYPT}``       bcrypt (the ``bcrypt`` package)
``{SSHA}``, ``{SSHA256}``, ``{SSHA512}``  salted SHA digests (hashlib)
``{CRYPT}`` + one of the crypt forms      as that form (DES crypt included)
``{PLAIN}``, ``{CLEARTEXT}``              plaintext (unless ``allow_plaintext = false``)
bare value (no prefix, no ``$id$``)       what ``[legacy] password_scheme`` says, see below
========================================  ===================================================

Any other ``{SCHEME}`` or ``$id$`` string is refused, never guessed to be a plaintext password.

A bare value is plaintext only when it cannot be a hash.  Under ``password_scheme = "auto"``
(the default) a bare value shaped like a hash (hex or base64 of a digest, a salted digest, a
DES or BSDi crypt string, MySQL's ``PASSWORD()``/``OLD_PASSWORD()``, a Django or Werkzeug
hash; see :func:`hash_shape`) is refused: taking it as plaintext would let anyone who read the
hash log in with the hash itself.  An explicit scheme makes every
bare value a hash of that scheme, and ``plain`` makes every bare value plaintext.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from passlib.hash import des_crypt, md5_crypt, sha256_crypt, sha512_crypt

from ..errors import ConfigError, HashingError
from ..settings import HashingConfig

__all__ = [
    "ARGON2ID_PREFIX",
    "Calibration",
    "Hasher",
    "Scheme",
    "VerifyResult",
    "bare_scheme",
    "calibrate",
    "hash_shape",
    "identify_scheme",
    "mysql323",
]

_log = logging.getLogger("eximauthd.hashing")

ARGON2ID_PREFIX = "{ARGON2ID}"

# Cost ceilings for the legacy schemes, for the same reason as hashing.max_*: a stored value sets
# the work done per login, so a corrupt or planted row must not be able to ask for minutes of CPU.
MAX_SHA_CRYPT_ROUNDS = 100_000
MAX_BCRYPT_COST = 14
# crypt_blowfish (and so every bcrypt hash a mail system made) uses the first 72 bytes only.
BCRYPT_MAX_BYTES = 72


class Scheme(enum.Enum):
    """A stored value's scheme as recognised by :func:`identify_scheme`."""

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
    """The outcome of :meth:`Hasher.verify`.

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
_PREFIXES: dict[str, Scheme] = {
    "ARGON2ID": Scheme.ARGON2ID,
    "ARGON2I": Scheme.ARGON2I,
    "MD5-CRYPT": Scheme.MD5_CRYPT,
    "SHA256-CRYPT": Scheme.SHA256_CRYPT,
    "SHA512-CRYPT": Scheme.SHA512_CRYPT,
    "BLF-CRYPT": Scheme.BCRYPT,
    "SSHA": Scheme.SSHA,
    "SSHA256": Scheme.SSHA256,
    "SSHA512": Scheme.SSHA512,
    "PLAIN": Scheme.PLAIN,
    "CLEARTEXT": Scheme.PLAIN,
}
_MCF_IDS: dict[str, Scheme] = {
    "argon2id": Scheme.ARGON2ID,
    "argon2i": Scheme.ARGON2I,
    "1": Scheme.MD5_CRYPT,
    "5": Scheme.SHA256_CRYPT,
    "6": Scheme.SHA512_CRYPT,
    "2a": Scheme.BCRYPT,
    "2b": Scheme.BCRYPT,
    "2y": Scheme.BCRYPT,
}
# A prefixed value must carry the matching modular-crypt form, e.g. {SHA512-CRYPT}$6$...
_MCF_FOR_PREFIX: dict[Scheme, frozenset[str]] = {
    Scheme.ARGON2ID: frozenset({"argon2id"}),
    Scheme.ARGON2I: frozenset({"argon2i"}),
    Scheme.MD5_CRYPT: frozenset({"1"}),
    Scheme.SHA256_CRYPT: frozenset({"5"}),
    Scheme.SHA512_CRYPT: frozenset({"6"}),
    Scheme.BCRYPT: frozenset({"2a", "2b", "2y"}),
}
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

# [legacy] password_scheme: what a bare stored value is.  None: decided by its shape ("auto").
_BARE_SCHEMES: dict[str, Scheme | None] = {
    "auto": None,
    "plain": Scheme.PLAIN,
    **{s.value: s for s in (*_HEX_DIGESTS, Scheme.MYSQL_NATIVE, Scheme.MYSQL323_HEX,
                            Scheme.DES_CRYPT)},
}

# Shapes of unsalted hashes that legacy tables hold bare.  Hex is matched in either case: MySQL's
# MD5()/SHA1() write lower case, other tools upper.  SHA-224 and SHA-384 are only recognised
# (refused), there is no password_scheme for them: no mail tool is known to store them.  16 hex
# digits is MySQL's OLD_PASSWORD() (password_scheme = "mysql323-hex").
_HEX_SHAPES = {16: "mysql323-hex", 32: "md5-hex", 40: "sha1-hex", 56: "sha224-hex",
               64: "sha256-hex", 96: "sha384-hex", 128: "sha512-hex"}
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_DES_CRYPT_RE = re.compile(r"[./0-9A-Za-z]{13}")
_MYSQL_NATIVE_RE = re.compile(r"\*[0-9A-Fa-f]{40}")
# BSDi extended DES crypt: "_", 4 characters of rounds, 4 of salt, 11 of hash.
_BSDI_CRYPT_RE = re.compile(r"_[./0-9A-Za-z]{19}")
# Framework formats: Django's "<algorithm>$..." and Werkzeug's "<method>:<params>$...".
_DJANGO_RE = re.compile(r"(?:pbkdf2_[a-z0-9]+|bcrypt_sha256|bcrypt|argon2|scrypt|crypt|sha1|md5"
                        r"|unsalted_md5|unsalted_sha1)\$", re.IGNORECASE)
_WERKZEUG_RE = re.compile(r"(?:pbkdf2|scrypt):", re.IGNORECASE)
# Joomla 1.x / osCommerce "hexdigest:salt".
_SALTED_HEX_RE = re.compile(r"[0-9A-Fa-f]{32,128}:[^:\s]{1,64}")
# Strict base64 (padding included) as OpenLDAP, Dovecot and scripts write digests.
_BASE64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
# Digest sizes in bytes: MD5, SHA-1, SHA-224, SHA-256, SHA-384, SHA-512.
_DIGEST_SIZES = frozenset({16, 20, 28, 32, 48, 64})
# {SSHA}, {SSHA256}, {SSHA512} without their prefix: digest + a 4 to 16 byte salt.
_SALTED_DIGEST_SIZES = frozenset(d + salt for d in (20, 32, 64) for salt in range(4, 17))
_MIN_HEX_DIGITS = 16
_PADDED = " (padded)"

def bare_scheme(name: str) -> Scheme | None:
    """The scheme of bare values under ``[legacy] password_scheme = name``; None for ``auto``.

    :raises ConfigError: not a known name (the configuration validates it first).
    """
    try:
        return _BARE_SCHEMES[name]
    except KeyError:
        raise ConfigError(f"legacy.password_scheme: unknown scheme {name[:40]!r}") from None


def hash_shape(value: str) -> str | None:
    """The kind of hash *value* is shaped like (``md5-hex``, ``des-crypt``, ``base64-digest``,
    ``django``, ...), or None for a value that cannot be one.  Pure; the kind is log-safe, the
    value is not.

    Under ``auto`` a bare value of any of these shapes is refused, never taken as plaintext, so
    the rule is deliberately broad (docs/passwords.md lists the plaintexts it also refuses):

    * hex of 16 or more digits, even length, optionally ``0x``-prefixed: a digest, MySQL's
      ``OLD_PASSWORD()`` (16), ``UNHEX()`` output shown as hex;
    * strict base64 decoding to a digest (16, 20, 28, 32, 48, 64 bytes) or to an SHA-1/256/512
      digest followed by a 4 to 16 byte salt ({SSHA*} without the prefix);
    * DES crypt, BSDi crypt (``_`` + 19), MySQL's ``*`` + 40 hex;
    * Django (``pbkdf2_sha256$``, ``sha1$``, ``md5$``, ``bcrypt$``, ``argon2$``, ...) and
      Werkzeug (``pbkdf2:``, ``scrypt:``) prefixes; Joomla/osCommerce ``hexdigest:salt``;
    * any of the above, a ``$id$`` crypt string or a ``{SCHEME}`` value with surrounding
      whitespace (the kind then ends in `` (padded)``).
    """
    kind = _bare_shape(value)
    if kind is not None:
        return kind
    stripped = value.strip(_BLANKS)
    if stripped and stripped != value:
        if _MCF_RE.match(stripped) or _PREFIX_RE.match(stripped):
            return "crypt-or-prefixed" + _PADDED
        kind = _bare_shape(stripped)
        if kind is not None:
            return kind + _PADDED
    return _encoded_shape(stripped)


# Stripped before looking again: what a CHAR column, an export or an editor leaves around a value.
_BLANKS = " \t\r\n\v\f\x00\ufeff\xa0"
_HEX_SEPARATORS_RE = re.compile(r"[:\-\s]")
_BASE64ISH_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_BASE32_RE = re.compile(r"[A-Z2-7]+={0,6}")
# A long run of hex or base64 characters inside a value that also holds "$" or ":": a salted
# or framework format (Magento "hex:salt:1", "salt:hex", "md5:hex", a crypt string without its
# leading "$", argon2 "argon2id$v=19$...").
_RUN_RE = re.compile(r"[A-Za-z0-9+/=._-]{20,}")
_MIN_ENCODED_BYTES = 16  # the shortest digest, MD5
# argon2, bcrypt and SHA-crypt strings that lost their leading "$" on the way into the table.
_CRYPT_WITHOUT_DOLLAR_RE = re.compile(r"(?:argon2(?:id|i|d)\$v=|2[abxy]\$[0-9]{2}\$"
                                      r"|[56]\$rounds=)")


def _looks_random(text: str) -> bool:
    """Upper and lower case and a digit or a base64 symbol: how encoded bytes look, and how a
    typed word (all lower case, a passphrase without digits) seldom does."""
    return (any(c.isupper() for c in text) and any(c.islower() for c in text)
            and any(c.isdigit() or c in "+/_-" for c in text))


def _encoded_shape(value: str) -> str | None:
    """The catch-alls, by content rather than by exact format: bytes of a hash written as hex
    with separators or a prefix, base64 without padding or URL-safe or wrapped, base32, or such
    a run inside a salted or framework format."""
    if len(value) < _MIN_HEX_DIGITS:
        return None
    if _CRYPT_WITHOUT_DOLLAR_RE.match(value):
        return "crypt-without-dollar"
    hexish = _HEX_SEPARATORS_RE.sub("", value.removeprefix("\\x").removeprefix("0x")
                                    .removeprefix("0X").removeprefix("*"))
    if (hexish != value and len(hexish) >= _MIN_HEX_DIGITS and len(hexish) % 2 == 0
            and _HEX_RE.fullmatch(hexish)):
        return "hex-encoded"
    joined = "".join(value.split())
    body = joined.rstrip("=")
    if (_BASE64ISH_RE.fullmatch(joined) and len(body) * 3 // 4 >= _MIN_ENCODED_BYTES
            and _looks_random(body)):
        return "base64-encoded"
    if _BASE32_RE.fullmatch(joined) and len(body) * 5 // 8 >= _MIN_ENCODED_BYTES \
            and any(c.isdigit() for c in body):
        return "base32-encoded"
    if "$" in value or ":" in value:
        for run in _RUN_RE.findall(value):
            if (len(run) % 2 == 0 and _HEX_RE.fullmatch(run)) or _looks_random(run):
                return "salted-or-framework"
    return None


# Shapes told by one pattern each, tried in this order; prefixes (Django, Werkzeug) match at
# the start, the others the whole value.
_FIXED_SHAPES: tuple[tuple[Callable[[str], object], str], ...] = (
    (_DES_CRYPT_RE.fullmatch, "des-crypt"),
    (_MYSQL_NATIVE_RE.fullmatch, "mysql-native"),
    (_BSDI_CRYPT_RE.fullmatch, "bsdi-crypt"),
    (_DJANGO_RE.match, "django"),
    (_WERKZEUG_RE.match, "werkzeug"),
    (_SALTED_HEX_RE.fullmatch, "salted-hex"),
)


def _bare_shape(value: str) -> str | None:
    digits = value[2:] if value[:2] in ("0x", "0X") else value
    if len(digits) >= _MIN_HEX_DIGITS and len(digits) % 2 == 0 and _HEX_RE.fullmatch(digits):
        if digits is not value:
            return "0x-hex"
        return _HEX_SHAPES.get(len(value), "hex-digest")
    for matches, kind in _FIXED_SHAPES:
        if matches(value):
            return kind
    if _BASE64_RE.fullmatch(value):
        # 3 bytes per 4 characters, less one per "=".
        size = len(value) // 4 * 3 - value.count("=")
        if size in _DIGEST_SIZES:
            return "base64-digest"
        if size in _SALTED_DIGEST_SIZES:
            return "base64-salted-digest"
    return None


_SHAPE_BASE_KINDS = frozenset({*_HEX_SHAPES.values(), "hex-digest", "0x-hex", "des-crypt",
                               "mysql-native", "bsdi-crypt", "django", "werkzeug", "salted-hex",
                               "base64-digest", "base64-salted-digest", "crypt-or-prefixed"})
# Kinds of the catch-alls (_encoded_shape), never with " (padded)": they strip blanks first.
_ENCODED_KINDS = frozenset({"hex-encoded", "base64-encoded", "base32-encoded",
                            "salted-or-framework", "crypt-without-dollar"})
_SHAPE_KINDS = _SHAPE_BASE_KINDS | {k + _PADDED for k in _SHAPE_BASE_KINDS} | _ENCODED_KINDS


def identify_scheme(stored: str, bare: Scheme | None = None) -> tuple[Scheme, str, str]:
    """Split a stored value into ``(scheme, body, label)``.

    ``body`` is what the scheme's verifier takes (the prefix removed); ``label`` names the scheme
    as found in the data (``{FOO}`` or ``$foo$``), for log lines about unknown schemes.  A value
    with neither is of scheme *bare* (see :func:`bare_scheme`) if it has that scheme's shape;
    otherwise it is ``UNKNOWN``, with the kind as label when :func:`hash_shape` knows its shape,
    except that with *bare* None ("auto") a value of no known shape is plaintext.  Pure.
    """
    prefix = _PREFIX_RE.match(stored)
    if prefix is not None:
        name = prefix.group(1).upper()
        body = stored[prefix.end():]
        label = "{" + name + "}"
        if name == "CRYPT":
            # Dovecot's {CRYPT} is "whatever crypt(3) makes of it": accept the forms we verify,
            # the traditional DES crypt (Dovecot's default for CRYPT) included.
            mcf = _MCF_RE.match(body)
            if mcf is not None and mcf.group(1) in _MCF_IDS:
                return _MCF_IDS[mcf.group(1)], body, label
            if _DES_CRYPT_RE.fullmatch(body):
                return Scheme.DES_CRYPT, body, label
            return Scheme.UNKNOWN, body, label
        scheme = _PREFIXES.get(name, Scheme.UNKNOWN)
        if scheme in _MCF_FOR_PREFIX:
            mcf = _MCF_RE.match(body)
            if mcf is None or mcf.group(1) not in _MCF_FOR_PREFIX[scheme]:
                return Scheme.UNKNOWN, body, label
        return scheme, body, label
    mcf = _MCF_RE.match(stored)
    if mcf is not None:
        return _MCF_IDS.get(mcf.group(1), Scheme.UNKNOWN), stored, "$" + mcf.group(1) + "$"
    if bare is Scheme.PLAIN:
        return bare, stored, "plaintext"
    shape = hash_shape(stored)
    if bare is not None and shape == bare.value:
        return bare, stored, bare.value
    if shape is not None:
        # Never plaintext: that would make the hash itself the password (pass-the-hash).
        return Scheme.UNKNOWN, stored, shape
    if bare is not None:
        # The column was declared to hold hashes: a value of no hash shape (a leftover
        # plaintext?) is neither compared as text nor as a hash.
        return Scheme.UNKNOWN, stored, f"bare value, not {bare.value}"
    return Scheme.PLAIN, stored, "plaintext"


class Hasher:
    """Hash new passwords with argon2id and verify stored values of any supported scheme.

    *password_scheme* is ``[legacy] password_scheme``: what a bare stored value is (see
    :func:`bare_scheme`).  Thread-safe: argon2-cffi's ``PasswordHasher`` holds only parameters.
    """

    def __init__(self, config: HashingConfig | None = None, *,
                 password_scheme: str = "auto") -> None:  # noqa: S107 -- a scheme name
        self.config = config or HashingConfig()
        self.bare = bare_scheme(password_scheme)
        self._ph = argon2.PasswordHasher(
            time_cost=self.config.time_cost,
            memory_cost=self.config.memory_cost,
            parallelism=self.config.parallelism,
            hash_len=self.config.hash_len,
            salt_len=self.config.salt_len,
            type=argon2.Type.ID,
        )
        # Verified when the user does not exist, so that "no such user" costs what "wrong
        # password" costs.  Random, so it can never match.
        self._dummy = self._ph.hash(secrets.token_urlsafe(32))

    def __repr__(self) -> str:
        c = self.config
        return f"Hasher(argon2id m={c.memory_cost} t={c.time_cost} p={c.parallelism})"

    def hash(self, password: str) -> str:
        """Return a new argon2id hash of *password* (with ``{ARGON2ID}`` if so configured).

        :raises HashingError: argon2 failed (e.g. out of memory); the password is not in the text.
        """
        try:
            encoded = self._ph.hash(password)
        except argon2.exceptions.HashingError:
            raise HashingError("argon2id hashing failed") from None
        return ARGON2ID_PREFIX + encoded if self.config.dovecot_prefix else encoded

    def verify(self, stored: str | None, password: str) -> VerifyResult:
        """Check *password* against *stored*.  Never raises; see :class:`VerifyResult`."""
        if not stored:
            return VerifyResult(False, Scheme.UNKNOWN, "no-password-set")
        scheme, body, label = identify_scheme(stored, self.bare)
        try:
            return self._verify_scheme(scheme, body, label, password)
        except Exception as exc:
            _log.warning("stored %s value could not be verified (%s)", scheme.value,
                         type(exc).__name__)
            return VerifyResult(False, scheme, "malformed-hash")

    def verify_dummy(self, password: str) -> None:
        """Spend the time of one argon2id verification and learn nothing."""
        with contextlib.suppress(VerificationError):
            self._ph.verify(self._dummy, password)

    def needs_rehash(self, stored: str) -> bool:
        """True unless *stored* is argon2id with exactly the configured parameters."""
        scheme, body, _ = identify_scheme(stored, self.bare)
        if scheme is not Scheme.ARGON2ID:
            return True
        try:
            return self._ph.check_needs_rehash(body)
        except (InvalidHashError, ValueError):
            return True

    def _verify_scheme(self, scheme: Scheme, body: str, label: str,
                       password: str) -> VerifyResult:
        match scheme:
            case Scheme.UNKNOWN if label in _SHAPE_KINDS:
                # A bare hash under "auto": the caller logs it, once per account.
                return VerifyResult(False, scheme, "unknown-scheme", looks_like=label)
            case Scheme.UNKNOWN:
                # Loud on purpose: an admin must learn that some rows can never log in.
                _log.error("refusing stored password with unsupported scheme %s", label[:40])
                return VerifyResult(False, scheme, "unknown-scheme")
            case Scheme.ARGON2ID | Scheme.ARGON2I:
                return self._verify_argon2(scheme, body, password)
            case Scheme.MD5_CRYPT | Scheme.SHA256_CRYPT | Scheme.SHA512_CRYPT:
                return _verify_sha_crypt(scheme, body, password)
            case Scheme.BCRYPT:
                return _verify_bcrypt(body, password)
            case Scheme.SSHA | Scheme.SSHA256 | Scheme.SSHA512:
                return _verify_ssha(scheme, body, password)
            case Scheme.MD5_HEX | Scheme.SHA1_HEX | Scheme.SHA256_HEX | Scheme.SHA512_HEX:
                return _verify_hex_digest(scheme, body, password)
            case Scheme.MYSQL_NATIVE:
                return _verify_mysql_native(body, password)
            case Scheme.MYSQL323_HEX:
                return _verify_mysql323(body, password)
            case Scheme.DES_CRYPT:
                return _verify_des_crypt(body, password)
            case Scheme.PLAIN:
                if not self.config.allow_plaintext:
                    return VerifyResult(False, scheme, "plaintext-disabled")
                ok = hmac.compare_digest(body.encode(), password.encode())
                return _result(ok, scheme, needs_rehash=True)

    def _verify_argon2(self, scheme: Scheme, body: str, password: str) -> VerifyResult:
        try:
            params = argon2.extract_parameters(body)
        except (InvalidHashError, ValueError):
            _log.warning("malformed stored %s hash", scheme.value)
            return VerifyResult(False, scheme, "malformed-hash")
        c = self.config
        if (params.memory_cost > c.max_memory_cost or params.time_cost > c.max_time_cost
                or params.parallelism > c.max_parallelism):
            _log.error("refusing stored %s hash with m=%d t=%d p=%d above the configured ceiling",
                       scheme.value, params.memory_cost, params.time_cost, params.parallelism)
            return VerifyResult(False, scheme, "cost-over-ceiling")
        try:
            self._ph.verify(body, password)
        except VerifyMismatchError:
            return VerifyResult(False, scheme, "mismatch")
        except (InvalidHashError, VerificationError):
            _log.warning("malformed stored %s hash", scheme.value)
            return VerifyResult(False, scheme, "malformed-hash")
        return VerifyResult(True, scheme, "ok", needs_rehash=self.needs_rehash(body))


def _result(ok: bool, scheme: Scheme, *, needs_rehash: bool) -> VerifyResult:
    if ok:
        return VerifyResult(True, scheme, "ok", needs_rehash=needs_rehash)
    return VerifyResult(False, scheme, "mismatch")


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


@dataclass(frozen=True, slots=True)
class Calibration:
    """One measured argon2id parameter set."""

    memory_cost: int
    time_cost: int
    parallelism: int
    seconds: float


def calibrate(target_seconds: float, *, max_memory_cost: int = 262144, parallelism: int = 1,
              samples: int = 3,
              clock: Callable[[], float] = time.perf_counter) -> list[Calibration]:
    """Measure argon2id on this host and return the parameter sets that fit *target_seconds*.

    Memory grows in steps from OWASP's 19 MiB to *max_memory_cost*; for each step the largest
    ``time_cost`` whose median verification time stays under the target is kept.  The last
    element is the strongest fit.  Runs for a few seconds; meant for ``eximauthd hash --calibrate``.
    """
    fits: list[Calibration] = []
    memory = 19456
    while memory <= max_memory_cost:
        best: Calibration | None = None
        for time_cost in range(1, 11):
            seconds = _median_verify_time(memory, time_cost, parallelism, samples, clock)
            if seconds > target_seconds:
                break
            best = Calibration(memory, time_cost, parallelism, seconds)
        if best is None:
            break
        fits.append(best)
        memory *= 2
    return fits


def _median_verify_time(memory: int, time_cost: int, parallelism: int, samples: int,
                        clock: Callable[[], float]) -> float:
    ph = argon2.PasswordHasher(time_cost=time_cost, memory_cost=memory, parallelism=parallelism)
    encoded = ph.hash("calibration")
    times = []
    for _ in range(samples):
        start = clock()
        ph.verify(encoded, "calibration")
        times.append(clock() - start)
    times.sort()
    return times[len(times) // 2]
