"""Postfix's policy delegation protocol (``check_policy_service``), pure: bytes in, requests and
replies out; the server in :mod:`eximauthd.service.policy` does the I/O.

Postfix writes ``name=value`` lines ended by an empty line, many requests on one long-lived
connection, and waits for one ``action=<ACTION> [text]`` line and an empty line per request.
:class:`PolicyReader` splits each line at its first ``=`` and keeps only the attributes the relay
rule reads (:data:`USED`): Postfix adds new names between releases, so an unknown name is
ignored.  Everything else is capped so that no client can make the server hold more than
:data:`MAX_REQUEST_BYTES` per connection: a line longer than :data:`MAX_LINE_BYTES`, more than
:data:`MAX_ATTRIBUTES` lines or more bytes than :data:`MAX_REQUEST_BYTES` in one request make
it *malformed*; it is still read to its empty line, so the next request on the connection is
read correctly, and answered like a request the service cannot decide.

:func:`policy_action` maps a relay :class:`~eximauthd.core.decision.Decision` to the action:
``yes`` is ``DUNNO`` (Postfix's own restrictions go on), ``no`` is ``REJECT 5.7.1`` and
``defer`` is ``DEFER_IF_PERMIT`` (a temporary refusal unless a later restriction rejects).
The texts reach the SMTP client: they never carry account state or the reason word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .decision import Decision, Reason, Result

__all__ = [
    "DEFER_TEXT",
    "DUNNO",
    "MAX_ATTRIBUTES",
    "MAX_LINE_BYTES",
    "MAX_REQUEST_BYTES",
    "RATE_TEXT",
    "REJECT_TEXT",
    "USED",
    "Malformed",
    "PolicyReader",
    "PolicyRequest",
    "format_action",
    "policy_action",
]

# Postfix 3.7 sends about 30 attributes; certificate subjects are the longest values (a few
# hundred bytes).  The caps leave room for that and for new attributes, not for a flood.
MAX_LINE_BYTES = 4096
MAX_ATTRIBUTES = 100
MAX_REQUEST_BYTES = 32768

# The attributes the relay rule reads; every other name is skipped unread.
USED = frozenset({"request", "protocol_state", "sasl_username", "sender", "recipient",
                  "instance", "client_address"})

DUNNO = "DUNNO"
REJECT_TEXT = "REJECT 5.7.1 Sender address not allowed for this login"
RATE_TEXT = "DEFER_IF_PERMIT Sending limit reached, try again later"
DEFER_TEXT = "DEFER_IF_PERMIT Sender check temporarily unavailable, try again later"


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One request: the attributes of :data:`USED` that were sent, decoded."""

    attributes: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str:
        """The value of *name*, or ``""`` when Postfix did not send it."""
        return self.attributes.get(name, "")

    @property
    def authenticated(self) -> bool:
        """Whether the SMTP client logged in (Postfix sends ``sasl_username=`` empty if not)."""
        return bool(self.get("sasl_username"))


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request that could not be read: *reason* says why, for the log line."""

    reason: str


class PolicyReader:
    """Read requests from the bytes of one connection, as they arrive.

    :meth:`feed` returns the requests completed by the new bytes, in order.  Memory stays bounded
    by the caps whatever the client sends: a line over the cap is skipped to its newline without
    being kept.
    """

    def __init__(self) -> None:
        self._partial = bytearray()
        self._skipping_line = False
        self._attributes: dict[str, str] = {}
        self._lines = 0
        self._size = 0
        self._problem = ""

    @property
    def mid_request(self) -> bool:
        """Whether a request has started and not ended (an empty line ends it)."""
        return bool(self._lines or self._partial or self._skipping_line)

    def feed(self, data: bytes) -> list[PolicyRequest | Malformed]:
        """The requests that *data* completes (one per empty line)."""
        done: list[PolicyRequest | Malformed] = []
        start = 0
        # Postfix writes each request in one go: a whole, well-formed one is read at once.
        # Anything else (a request split across reads, a fault, a stray empty line) is read
        # line by line below, which decides every case the same way with its reason.
        while not (self._lines or self._partial or self._skipping_line):
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            request = _whole_request(data[start:end + 1])
            if request is None:
                break
            done.append(request)
            start = end + 2
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            start = len(data) if end < 0 else end + 1
            if self._skipping_line:
                self._size += len(piece)
            elif len(self._partial) + len(piece) > MAX_LINE_BYTES:
                self._size += len(self._partial) + len(piece)
                self._partial.clear()
                self._skipping_line = True
                self._fault("line-too-long")
            else:
                self._partial += piece
            if end < 0:
                break
            finished = self._end_line()
            if finished is not None:
                done.append(finished)
        return done

    def _end_line(self) -> PolicyRequest | Malformed | None:
        line = bytes(self._partial)
        self._partial.clear()
        if self._skipping_line:
            self._skipping_line = False
            self._lines += 1
            return None
        if not line:
            return self._finish() if self._lines else None  # a stray empty line: nothing
        self._lines += 1
        self._size += len(line) + 1
        if self._lines > MAX_ATTRIBUTES:
            self._fault("too-many-attributes")
        elif self._size > MAX_REQUEST_BYTES:
            self._fault("request-too-long")
        if self._problem:
            return None
        name, sep, value = line.partition(b"=")
        if not sep or not name:
            self._fault("not-name-value")
            return None
        try:
            key = name.decode("ascii")
        except UnicodeDecodeError:
            self._fault("bad-name")
            return None
        if key not in USED:
            return None
        if key in self._attributes:
            self._fault("repeated-attribute")
            return None
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            self._fault("not-utf8")
            return None
        if not text.isprintable():
            self._fault("control-character")
            return None
        self._attributes[key] = text
        return None

    def _fault(self, reason: str) -> None:
        if not self._problem:
            self._problem = reason

    def _finish(self) -> PolicyRequest | Malformed:
        problem, attributes = self._problem, self._attributes
        self._attributes, self._lines, self._size, self._problem = {}, 0, 0, ""
        if problem:
            return Malformed(problem)
        if attributes.get("request") != "smtpd_access_policy":
            return Malformed("not-access-policy")
        return PolicyRequest(attributes)


# A request's lines when every one is ``name=value`` with an ASCII name: the one check the
# line-by-line reading makes of the attributes it skips.
_WELL_FORMED = re.compile(rb"(?:[^\n=\x80-\xff]+=[^\n]*\n)+")
_USED_LINE = re.compile(rb"^(" + b"|".join(sorted(n.encode() for n in USED)) + rb")=(.*)$",
                        re.MULTILINE)


def _whole_request(block: bytes) -> PolicyRequest | Malformed | None:
    """The request of *block* (its lines, each with its newline, without the empty line)
    when it is well-formed and within every cap; None to read it line by line instead.

    Decides exactly as :meth:`PolicyReader.feed` line by line would, or not at all.
    """
    if (len(block) > MAX_LINE_BYTES or block.count(b"\n") > MAX_ATTRIBUTES
            or not _WELL_FORMED.fullmatch(block)):
        return None  # long lines, many of them, or a fault: counted and named line by line
    attributes: dict[str, str] = {}
    for name, value in _USED_LINE.findall(block):
        key = name.decode("ascii")
        if key in attributes:
            return None
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not text.isprintable():
            return None
        attributes[key] = text
    if attributes.get("request") != "smtpd_access_policy":
        return Malformed("not-access-policy")
    return PolicyRequest(attributes)


def policy_action(decision: Decision) -> str:
    """The action for a relay *decision* (without ``action=``)."""
    match decision.result:
        case Result.YES:
            return DUNNO
        case Result.NO:
            return REJECT_TEXT
    return RATE_TEXT if decision.reason is Reason.RATE_LIMIT else DEFER_TEXT


def format_action(action: str) -> bytes:
    """The reply to one request: ``action=<action>`` and the empty line that ends it."""
    return f"action={action}\n\n".encode("ascii")
