"""The line protocol between Exim's ``${readsocket}`` and eximauthd.  Pure: bytes in, values out.

One request line per connection, one answer line, then the server closes::

    AUTH <PLAIN|LOGIN> <b64 user> <b64 password> <client ip>
    RELAY <b64 authenticated id> <b64 envelope sender> <b64 recipient> <client ip> [<txn>]
    PING
    FORGET <b64 address>

Fields are separated by exactly one space.  Every value that comes from the SMTP client is
base64 (Exim's ``${str2b64:...}``), so spaces, NULs, newlines and quotes cannot change the shape
of the line.  Empty fields are legal: an empty authenticated id or the null sender arrive as an
empty base64 field (two spaces in a row), and the client ip is empty for local submissions.
The optional last RELAY field names the SMTP transaction (``[A-Za-z0-9._-]{1,64}``, made by
Exim, not the client: the snippets use ``$pid.$tod_epoch_l`` kept in an ``acl_m`` variable), so
that a message is counted once however many recipients it has; requests without it still parse.

``FORGET`` is not Exim's: ``eximauthd user passwd|disable|delete`` sends it so that the
service drops what its AUTH cache holds for that address (answer ``yes``; it can only ever make
the next AUTH stricter).

Answers are ``yes``, ``no`` or ``defer <reason>``, each ending in a newline.  A malformed
request raises :class:`~eximauthd.errors.ProtocolError`; the service answers ``defer <reason>``
so that Exim fails temporarily: a request the service cannot read means the snippets and the
service disagree, which an admin must fix, and no mail is lost meanwhile.
"""

from __future__ import annotations

import binascii
import functools
import ipaddress
import re
from dataclasses import dataclass

from ..errors import ProtocolError
from .decision import Decision, Reason, Result

__all__ = [
    "MAX_REQUEST_BYTES",
    "MECHANISMS",
    "AuthRequest",
    "ForgetRequest",
    "PingRequest",
    "RelayRequest",
    "Request",
    "format_reply",
    "is_valid_reply",
    "is_valid_transaction",
    "parse_client_ip",
    "parse_request",
]

# Four base64 fields of 320-byte addresses or 1 KiB passwords fit with room to spare.
MAX_REQUEST_BYTES = 4096
MECHANISMS = frozenset({"PLAIN", "LOGIN"})

_PRINTABLE_LINE = re.compile(rb"[\x20-\x7e]*")
_REASON_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_REPLY_RE = re.compile(rb"(?:yes|no|defer [A-Za-z0-9._-]{1,64})\n")
_TRANSACTION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """``AUTH``: check a username and password.  ``repr`` never shows the password."""

    mechanism: str
    username: str
    password: str
    client_ip: str

    def __repr__(self) -> str:
        return (f"AuthRequest(mechanism={self.mechanism!r}, username={self.username!r}, "
                f"password={'***' if self.password else ''!r}, client_ip={self.client_ip!r})")

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """``RELAY``: may *authenticated_id* send with envelope *sender* to *recipient*?"""

    authenticated_id: str
    sender: str
    recipient: str
    client_ip: str
    transaction: str = ""  # the SMTP transaction, for counting messages; "" when not sent


@dataclass(frozen=True, slots=True)
class PingRequest:
    """``PING``: can the service decide (is the database reachable)?"""


@dataclass(frozen=True, slots=True)
class ForgetRequest:
    """``FORGET``: drop the cached AUTH successes of *address* (its account changed)."""

    address: str


Request = AuthRequest | RelayRequest | PingRequest | ForgetRequest


def _decode(field: str) -> str:
    """Decode one strict base64 field (padding required); empty stays empty."""
    if not field:
        return ""
    try:
        # What base64.b64decode(field, validate=True) does, without its argument checks: the
        # line is ASCII already.
        raw = binascii.a2b_base64(field, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(Reason.BAD_BASE64) from None
    # Invalid UTF-8 is not a protocol error: it is passed on (surrogate-escaped) and the
    # credential or policy check refuses it, as it refuses any other wrong value.
    return raw.decode("utf-8", "surrogateescape")


def parse_client_ip(field: str) -> str:
    """Return *field* unchanged if it is empty or a bare IPv4/IPv6 literal.

    A scope id (``fe80::1%eth0``) is refused although :mod:`ipaddress` accepts one: Exim's
    ``$sender_host_address`` never carries it, and its free text would reach logs and the
    per-IP throttling key.  The one check for a client address, wherever it comes from (the
    socket, the HTTP API, ``eximauthd check --client-ip``).

    :raises ProtocolError: ``bad-client-ip``.
    """
    if field and not (_known_ip(field) if len(field) <= _LONGEST_IP else _is_ip(field)):
        raise ProtocolError(Reason.BAD_CLIENT_IP)
    return field


def _is_ip(field: str) -> bool:
    if "%" in field:
        return False
    try:
        ipaddress.ip_address(field)
    except ValueError:
        return False
    return True


# The longest IPv6 text ("ffff:...:255.255.255.255") is 45 characters: longer fields are never
# addresses, and are not kept.  Clients come back, and ipaddress is slow next to the rest of a
# request: the answer for the last few thousand is remembered (a few hundred KiB at most).
_LONGEST_IP = 45
_known_ip = functools.lru_cache(maxsize=4096)(_is_ip)


def _line(data: bytes) -> str:
    """Check the framing of *data* and return its single line, without the newline."""
    if not data:
        raise ProtocolError(Reason.EMPTY)
    if len(data) > MAX_REQUEST_BYTES:
        raise ProtocolError(Reason.TOO_LONG)
    if not data.endswith(b"\n"):
        raise ProtocolError(Reason.MISSING_NEWLINE)
    body = data[:-1]
    if b"\n" in body or b"\r" in body:
        raise ProtocolError(Reason.SEVERAL_LINES)
    if not _PRINTABLE_LINE.fullmatch(body):
        raise ProtocolError(Reason.NOT_ASCII)
    return body.decode("ascii")


def parse_request(data: bytes) -> Request:
    """Parse one request (the bytes up to and including its newline).

    :raises ProtocolError: with ``reason`` one of ``empty``, ``too-long``, ``missing-newline``,
        ``several-lines``, ``not-ascii``, ``unknown-verb``, ``wrong-field-count``,
        ``bad-base64``, ``unsupported-mechanism``, ``bad-client-ip``, ``bad-transaction``.
    """
    fields = _line(data).split(" ")
    verb = fields[0]
    if verb == "PING":
        if len(fields) != 1:
            raise ProtocolError(Reason.WRONG_FIELD_COUNT)
        return PingRequest()
    if verb == "FORGET":
        if len(fields) != 2:
            raise ProtocolError(Reason.WRONG_FIELD_COUNT)
        return ForgetRequest(_decode(fields[1]))
    if verb not in {"AUTH", "RELAY"}:
        raise ProtocolError(Reason.UNKNOWN_VERB)
    if len(fields) != 5 and not (verb == "RELAY" and len(fields) == 6):
        raise ProtocolError(Reason.WRONG_FIELD_COUNT)
    if verb == "AUTH":
        if fields[1] not in MECHANISMS:
            raise ProtocolError(Reason.UNSUPPORTED_MECHANISM)
        return AuthRequest(fields[1], _decode(fields[2]), _decode(fields[3]),
                           parse_client_ip(fields[4]))
    transaction = fields[5] if len(fields) == 6 else ""
    if len(fields) == 6 and not is_valid_transaction(transaction):
        raise ProtocolError(Reason.BAD_TRANSACTION)
    return RelayRequest(_decode(fields[1]), _decode(fields[2]), _decode(fields[3]),
                        parse_client_ip(fields[4]), transaction)


def is_valid_transaction(text: str) -> bool:
    """True for a transaction id the protocol accepts: ``[A-Za-z0-9._-]{1,64}``."""
    return _TRANSACTION_RE.fullmatch(text) is not None


def format_reply(decision: Decision) -> bytes:
    """The answer line for *decision*: ``yes``, ``no`` or ``defer <reason>``, with newline.

    ``no`` carries no reason on the wire: Exim's snippets match ``^(yes|no)\\n\\z`` exactly.
    A defer reason is cut to 64 characters from ``[A-Za-z0-9._-]``.
    """
    if decision.result is Result.YES:
        return b"yes\n"
    if decision.result is Result.NO:
        return b"no\n"
    reason = _REASON_UNSAFE.sub("-", decision.text)[:64] or "unavailable"
    return b"defer " + reason.encode("ascii") + b"\n"


def is_valid_reply(data: bytes) -> bool:
    """True when *data* is exactly one documented answer line."""
    return _REPLY_RE.fullmatch(data) is not None
