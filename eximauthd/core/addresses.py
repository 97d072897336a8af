"""Mail addresses as eximauthd identifies accounts by them.

Accounts are keyed by ``local@domain``.  Exim compares local parts caselessly unless a router sets
``caseful_local_part``, and domains are case-insensitive by RFC 5321, so the canonical form of an
account address is all lower case.  Parsing is deliberately strict: an AUTH username that is not a
plain address (whitespace, control characters, several ``@``, a source route, over-long parts)
cannot name an account, so it is refused before any database work.

The same rule decides what a *stored* row names (:func:`stored_address`): a row is the account
``local@domain`` only if its value parses under :func:`parse_address` to exactly that canonical
form.  A database collation never decides it: MySQL's default collations call ``alicé`` and
``alice``, ``müller`` and ``muller``, ``alice `` and ``alice`` equal, and a row for one would
otherwise log in (and send) as the other.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ..errors import AddressError

__all__ = ["Address", "parse_address", "stored_address"]

# RFC 5321 limits: local part 64 octets, domain 255, a path 256 with the brackets.
_MAX_LOCAL = 64
_MAX_DOMAIN = 255
# Unquoted local parts only (dot-atom); quoted local parts never name a login.
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed, lower-cased ``local@domain``."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_address(text: str) -> Address:
    """Parse *text* as an account address and return its canonical (lower-case) form.

    :raises AddressError: *text* is not ``dot-atom@domain`` within RFC 5321's length limits.
        The message quotes at most the first 64 characters of the input.
    """
    # Logins and senders come back request after request: the last two thousand addresses
    # are remembered (an Address is immutable; a refusal is not kept).  Longer texts are never
    # addresses and are not kept either, so the memo stays under about 2 MiB.
    return _known(text) if len(text) <= _LONGEST else _parse(text)


# RFC 5321: a 64-octet local part, "@" and a 255-octet domain.
_LONGEST = _MAX_LOCAL + 1 + _MAX_DOMAIN


def _parse(text: str) -> Address:
    shown = text[:64]
    if not text.isascii():
        # Also covers lone surrogates (undecodable bytes from the socket), which would make
        # the length check below raise UnicodeEncodeError instead of AddressError.
        raise AddressError(f"not an ASCII address: {shown!r}")
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain:
        raise AddressError(f"not an address (expected local@domain): {shown!r}")
    if len(local.encode()) > _MAX_LOCAL or len(domain.encode()) > _MAX_DOMAIN:
        raise AddressError(f"address too long: {shown!r}")
    if not _LOCAL_RE.fullmatch(local):
        raise AddressError(f"invalid local part in {shown!r}")
    if not _DOMAIN_RE.fullmatch(domain):
        raise AddressError(f"invalid domain in {shown!r}")
    return Address(local.lower(), domain.lower())


_known = functools.lru_cache(maxsize=2048)(_parse)


def stored_address(*parts: object) -> Address | None:
    """The account a stored row names, or None when it names none.  Pure.

    *parts* is the row's one ``local@domain`` value, or its local part and its domain (a table
    with two columns).  The row names an account only when the value is itself an address
    under :func:`parse_address`: ASCII dot-atom, no padding, no other characters; case is
    folded (``Alice@Example.TEST`` is ``alice@example.test``).  A value from a binary column
    (bytes) is read as ASCII.  Compare the result with ``==``: that is byte for byte.
    """
    texts: list[str] = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, bytes | bytearray | memoryview):
            try:
                texts.append(bytes(part).decode("ascii"))
            except UnicodeDecodeError:
                return None
        else:
            return None
    if len(texts) not in (1, 2):
        return None
    try:
        address = parse_address("@".join(texts))
    except AddressError:
        return None
    if len(texts) == 2 and (address.local, address.domain) != (texts[0].lower(),
                                                               texts[1].lower()):
        # An "@" inside one of the two columns: the parts do not name this address.
        return None
    return address
