"""Dovecot's auth-client protocol, as Exim's ``dovecot`` driver and Postfix's SASL speak it.
Pure: lines in, actions out; the server in :mod:`eximauthd.service.dovecot` does the I/O.

The server speaks first, unprompted (:func:`handshake`): Exim reads up to ``DONE`` before it
writes anything, and MECH lines must come before SPID or both MTAs take the socket for another
kind.  The client then sends ``VERSION``, ``CPID`` and, per authentication,
``AUTH <id> <MECH> <name[=value]>...`` with ``resp=<base64>`` when it has an initial response
(Exim always sends ``resp=``, empty without one; Postfix leaves it out).  Parameters are read
by name.  Replies, per request id::

    CONT <id> <base64 challenge>    (the TAB before an empty challenge is required)
    OK <id> user=<login>            (user= always: without it Exim and Postfix refuse)
    FAIL <id>                       (no reason=: Postfix shows it to the SMTP client)

PLAIN is ``authzid NUL authcid NUL password``; an authzid other than the authcid is refused,
as neither MTA checks it.  LOGIN prompts ``Username:`` then ``Password:`` (an initial response
is the username).  Everything a client sends is checked strictly: lines of at most
:data:`MAX_LINE_BYTES`, no NUL, CR, ``\\001`` or other control character, strict base64
(padding required, nothing after it), numeric ids, at most :data:`MAX_REQUESTS` requests
open per connection (Postfix never cancels an abandoned one: the oldest waiting is dropped).

A line the session cannot accept ends the connection (:class:`Close`): the MTA then answers
with a temporary error (Exim 435, Postfix 454), which is also how the server says "cannot
decide" (database down, overloaded).  FAIL is a permanent 535 in both MTAs: it is sent only for
credentials that are wrong.  Nothing here ever produces ``OK`` except :meth:`Session.decided`
for a ``yes`` of the credential check.
"""

from __future__ import annotations

import binascii
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from ..errors import AddressError, ProtocolError
from .addresses import parse_address
from .decision import Decision, Result
from .protocol import parse_client_ip

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_REQUESTS",
    "MECHANISMS",
    "Check",
    "Close",
    "Reply",
    "Session",
    "handshake",
]

# Exim reads the server's lines into an 8192-byte buffer; nothing a client needs is longer.
MAX_LINE_BYTES = 8192
# Requests open at once on one connection (waiting for a CONT or being checked).  Exim uses
# one per connection, Postfix one at a time per smtpd process and never cancels.
MAX_REQUESTS = 16
MECHANISMS = ("PLAIN", "LOGIN")
_MAX_ID = 2**32 - 1
_VERSION_MAJOR = "1"
_VERSION_MINOR = "2"

_USERNAME_PROMPT = "VXNlcm5hbWU6"  # base64 "Username:"
_PASSWORD_PROMPT = "UGFzc3dvcmQ6"  # noqa: S105 -- base64 "Password:", the prompt
# Printable ASCII and TAB, or any non-ASCII UTF-8: no NUL, CR, \001, other controls or DEL.
_BAD_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(r"[1-9][0-9]{0,9}")
_HEX = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Reply:
    """Send *line* (its newline added by :meth:`data`).  *refused* names why a FAIL was sent
    without a credential check, for the log line (with the request's *mechanism* and
    *client_ip*)."""

    line: str
    refused: str = ""
    mechanism: str = ""
    client_ip: str = ""

    @property
    def data(self) -> bytes:
        return self.line.encode("utf-8") + b"\n"


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection: the MTA answers with a temporary error.  *reason* is for logs."""

    reason: str


@dataclass(frozen=True, slots=True)
class Check:
    """Ask the credential check; hand its decision to :meth:`Session.decided`.  ``repr``
    never shows the password."""

    request_id: int
    mechanism: str
    username: str
    password: str = field(repr=False)
    client_ip: str


Action = Reply | Close | Check


class _Step(Enum):
    PLAIN = "plain"             # waiting for the PLAIN message
    LOGIN_USER = "login-user"   # waiting for the username
    LOGIN_PASSWORD = "login-password"  # noqa: S105 -- waiting for the password
    CHECKING = "checking"       # the credential check runs


@dataclass(slots=True)
class _Pending:
    mechanism: str
    client_ip: str
    step: _Step
    username: str = field(default="", repr=False)
    cancelled: bool = False


def handshake(spid: int, cuid: int, cookie: str) -> bytes:
    """The server's unprompted greeting: VERSION, MECH (before SPID), SPID, CUID, COOKIE, DONE.

    PLAIN and LOGIN carry the ``plaintext`` flag: Postfix applies its
    ``smtpd_sasl_security_options`` to it.  *cookie* is 32 lower-case hex digits.
    """
    if spid < 1 or cuid < 1 or not _HEX.fullmatch(cookie):
        raise ValueError("handshake: spid and cuid must be positive, cookie 32 hex digits")
    lines = [f"VERSION\t{_VERSION_MAJOR}\t{_VERSION_MINOR}",
             *(f"MECH\t{mech}\tplaintext" for mech in MECHANISMS),
             f"SPID\t{spid}", f"CUID\t{cuid}", f"COOKIE\t{cookie}", "DONE"]
    return "".join(line + "\n" for line in lines).encode("ascii")


class Session:
    """The state of one client connection.  Feed it lines with :meth:`receive`, the credential
    checks' decisions with :meth:`decided`; do what the returned actions say.

    Once it returned a :class:`Close` it is closed: every later call returns the same Close.
    """

    def __init__(self, max_requests: int = MAX_REQUESTS) -> None:
        self._max = max_requests
        self._version_seen = False
        self._cpid_seen = False
        self._open: OrderedDict[int, _Pending] = OrderedDict()
        self.closed: Close | None = None

    @property
    def open_requests(self) -> int:
        """Requests waiting for a CONT or being checked."""
        return len(self._open)

    @property
    def checking(self) -> int:
        """Requests whose credential check runs."""
        return sum(1 for p in self._open.values() if p.step is _Step.CHECKING)

    def receive(self, line: bytes) -> list[Action]:
        """Read one line (without its newline) from the client."""
        if self.closed is not None:
            return [self.closed]
        try:
            return self._receive(line)
        except ProtocolError as exc:
            self.closed = Close(exc.reason)
            self._open.clear()
            return [self.closed]

    def decided(self, request_id: int, decision: Decision,
                username: str) -> Reply | Close | None:
        """The reply to the check of *request_id*: OK for yes, FAIL for no, Close for defer.

        None when the request is gone (the connection closed meanwhile).  *username* is the
        one checked; OK carries its canonical form.
        """
        if self.closed is not None:
            return None
        pending = self._open.get(request_id)
        if pending is None or pending.step is not _Step.CHECKING:
            return None
        del self._open[request_id]
        if pending.cancelled:
            return None
        if decision.result is Result.DEFER:
            # "Cannot decide" has no reply of its own: FAIL would be a permanent 535.
            self.closed = Close(f"defer-{decision.text}")
            self._open.clear()
            return self.closed
        if decision.result is Result.YES:
            user = _login(username)
            if user is not None:
                return Reply(f"OK\t{request_id}\tuser={user}")
        return Reply(f"FAIL\t{request_id}")

    # --- reading -------------------------------------------------------------------------

    def _receive(self, line: bytes) -> list[Action]:
        fields = _fields(line)
        command = fields[0]
        if not self._version_seen:
            # The first line: VERSION with our major (1) and a numeric minor.
            if (command != "VERSION" or len(fields) != 3 or fields[1] != _VERSION_MAJOR
                    or not re.fullmatch(r"[0-9]{1,9}", fields[2])):
                raise ProtocolError("version-expected")
            self._version_seen = True
            return []
        match command:
            case "CPID":
                if self._cpid_seen or len(fields) != 2 or not _DIGITS.fullmatch(fields[1]):
                    raise ProtocolError("bad-cpid")
                self._cpid_seen = True
                return []
            case "AUTH":
                return self._auth(fields)
            case "CONT":
                return self._cont(fields)
            case "CANCEL":
                if len(fields) != 2:
                    raise ProtocolError("wrong-field-count")
                self._cancel(_request_id(fields[1]))
                return []
            case _:
                raise ProtocolError("unknown-command")

    def _cancel(self, request_id: int) -> None:
        pending = self._open.get(request_id)
        if pending is None:
            return
        if pending.step is _Step.CHECKING:
            # The check finishes (the throttle counts it); its reply is not sent.
            pending.cancelled = True
        else:
            del self._open[request_id]

    def _auth(self, fields: list[str]) -> list[Action]:
        if len(fields) < 3:
            raise ProtocolError("wrong-field-count")
        request_id = _request_id(fields[1])
        if request_id in self._open:
            raise ProtocolError("id-in-use")
        # ASCII only: str.upper() maps a dotless i (U+0131) to I, "pla\u0131n" to PLAIN.
        mechanism = fields[2].upper() if fields[2].isascii() else ""
        if mechanism not in MECHANISMS:
            raise ProtocolError("unsupported-mechanism")
        params: dict[str, str] = {}
        for param in fields[3:]:
            name, sep, value = param.partition("=")
            if sep and name in params:
                raise ProtocolError("repeated-parameter")
            if sep:
                params[name] = value
        client_ip = parse_client_ip(params.get("rip", ""))
        self._make_room()
        resp = params.get("resp")
        # Exim sends "resp=" without an initial response; RFC 4954's "=" is an empty one.
        if resp == "":
            resp = None
        elif resp == "=":
            resp = ""
        if mechanism == "PLAIN":
            self._open[request_id] = _Pending(mechanism, client_ip, _Step.PLAIN)
            if resp is None:
                return [Reply(f"CONT\t{request_id}\t")]
            return self._step(request_id, resp)
        self._open[request_id] = _Pending(mechanism, client_ip, _Step.LOGIN_USER)
        if resp is None:
            return [Reply(f"CONT\t{request_id}\t{_USERNAME_PROMPT}")]
        return self._step(request_id, resp)

    def _cont(self, fields: list[str]) -> list[Action]:
        if len(fields) != 3:
            raise ProtocolError("wrong-field-count")
        request_id = _request_id(fields[1])
        pending = self._open.get(request_id)
        if pending is None:
            # Dropped as abandoned, or never opened: nothing to continue.
            return [Reply(f"FAIL\t{request_id}", "unknown-id")]
        if pending.step is _Step.CHECKING:
            raise ProtocolError("cont-while-checking")
        self._open.move_to_end(request_id)
        return self._step(request_id, fields[2])

    def _step(self, request_id: int, data: str) -> list[Action]:
        """Take the client's next SASL message for *request_id*."""
        pending = self._open[request_id]
        raw = _strict_b64(data)
        if raw is None:
            del self._open[request_id]
            return [Reply(f"FAIL\t{request_id}", "bad-base64", pending.mechanism,
                           pending.client_ip)]
        match pending.step:
            case _Step.PLAIN:
                parts = raw.split(b"\0")
                if len(parts) != 3:
                    del self._open[request_id]
                    return [Reply(f"FAIL\t{request_id}", "malformed-plain", "PLAIN",
                                  pending.client_ip)]
                authzid, username, password = (_text(p) for p in parts)
                if authzid and authzid != username:
                    # Logging in as one identity to act as another: neither MTA checks it.
                    del self._open[request_id]
                    return [Reply(f"FAIL\t{request_id}", "authzid-mismatch", "PLAIN",
                                  pending.client_ip)]
                return [self._checking(request_id, pending, username, password)]
            case _Step.LOGIN_USER:
                pending.username = _text(raw)
                pending.step = _Step.LOGIN_PASSWORD
                return [Reply(f"CONT\t{request_id}\t{_PASSWORD_PROMPT}")]
            case _:
                return [self._checking(request_id, pending, pending.username, _text(raw))]

    def _checking(self, request_id: int, pending: _Pending, username: str,
                  password: str) -> Check:
        pending.step = _Step.CHECKING
        pending.username = ""
        return Check(request_id, pending.mechanism, username, password, pending.client_ip)

    def _make_room(self) -> None:
        """Drop the oldest request waiting for a CONT when the connection has no room left."""
        if len(self._open) < self._max:
            return
        for request_id, pending in self._open.items():
            if pending.step is not _Step.CHECKING:
                del self._open[request_id]
                return
        raise ProtocolError("too-many-requests")


def _fields(line: bytes) -> list[str]:
    """The TAB-separated fields of one line (without its newline), checked for size and bytes."""
    if len(line) >= MAX_LINE_BYTES:
        raise ProtocolError("too-long")
    if _BAD_BYTES.search(line):
        raise ProtocolError("control-character")
    try:
        return line.decode("utf-8").split("\t")
    except UnicodeDecodeError:
        raise ProtocolError("not-utf8") from None


def _request_id(text: str) -> int:
    if not _DIGITS.fullmatch(text) or int(text) > _MAX_ID:
        raise ProtocolError("bad-id")
    return int(text)


def _strict_b64(data: str) -> bytes | None:
    """Strict base64 (padding required, nothing after it, no whitespace), or None."""
    try:
        return binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def _text(raw: bytes) -> str:
    # Invalid UTF-8 is passed on surrogate-escaped; the credential check refuses it.
    return raw.decode("utf-8", "surrogateescape")


def _login(username: str) -> str | None:
    """The canonical login for ``user=``, or None if it cannot be sent safely."""
    try:
        return str(parse_address(username))
    except AddressError:
        return None
