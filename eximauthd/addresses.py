"""Mail addresses as eximauthd identifies accounts by them.

Accounts are keyed by ``local@domain``.  Exim compares local parts caselessly unless a router sets
``caseful_local_part``, and domains are case-insensitive by RFC 5321, so the canonical form of an
account address is all lower case.  Parsing is deliberately strict: an AUTH username that is not a
plain address (whitespace, control characters, several ``@``, a source route, over-long parts)
cannot name an account, so it is refused before any database work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import AddressError

__all__ = ["Address", "parse_address"]

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
