"""Whether a bare stored value is shaped like a hash: :func:`hash_shape` and its patterns.

Its own module because the rule is long and is one thing: under ``[legacy] password_scheme =
"auto"`` a bare value of any of these shapes is refused, never taken as plaintext (taking it
so would let anyone who read the hash log in with the hash itself).  The DES-crypt and MySQL
``PASSWORD()`` patterns live here and nowhere else; the verifiers import them.  Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .schemes import _MCF_RE, _PREFIX_RE

__all__ = ["hash_shape"]

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
