"""``eximauthd audit-log``: read Exim mainlogs and answer "am I relaying spam?".

Pure parsing and aggregation (:func:`parse_line`, :class:`Auditor`); the CLI feeds it lines from
files, ``.gz`` rotations or stdin.  Streaming: memory is bounded by the number of messages in
flight (arrival seen, completion not yet), capped at :data:`MAX_TRACKED`, not by the log's size.

What it looks for:

- ``empty-auth-id``: a message accepted from a client that authenticated with an empty id
  (``A=plain:`` followed by nothing): the seed's signature, and an open relay.
- ``sender-outside-login``: an authenticated id sending with an envelope sender outside its own
  domain.
- ``relay-burst``: remote deliveries of one authenticated id or one client IP above a threshold
  within an hour.
- ``fake-local-helo``: a remote client whose HELO claims to be localhost or a loopback literal
  (the seed's ``H=([127.0.0.1]) [129.137.152.170]``).

Lines are read as Exim writes them whatever the log selectors: a timestamp (``+millisec``
adds ``.mmm``, ``log_timezone`` adds ``+hhmm``), then ``[pid]`` with ``+pid``, then the message
id.  Fields are split with quoted strings, ``(HELO)`` and ``[address]`` kept whole, so text a
client chose (a quoted sender, a HELO, a subject) cannot pose as an ``A=`` or ``H=`` field.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = [
    "MAX_TRACKED",
    "Arrival",
    "AuditReport",
    "Auditor",
    "Delivery",
    "Finding",
    "LoginFindings",
    "is_exim_line",
    "parse_line",
]

MAX_TRACKED = 200_000

# What Exim's log.c writes before the text: "%s " of the timestamp (".mmm" with +millisec,
# " +hhmm" with log_timezone), "[%ld] " with +pid, then "%s " of the message id if any.
_PREFIX = (r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d{3})?(?: [-+]\d{4})?"
           r"(?: \[\d+\])? ")
_ID = r"(?P<id>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4})"
_PREFIX_RE = re.compile(_PREFIX)
_MESSAGE_RE = re.compile(rf"{_PREFIX}{_ID} (?P<text>.*)", re.DOTALL)
_FLAGS = frozenset({"<=", "=>", "->", "*>", "**", "=="})
# Lines without a message id that only Exim writes: connections, rejections, queue runners,
# the daemon, authenticator failures.
_EXIM_TEXT_RE = re.compile(
    r"(?:H=|U=|SMTP |TLS error |no (?:host name|IP address) found |Start queue run|"
    r"End queue run|exim \d+\.\d+|\S+ authenticator failed for |Connection from |"
    r"pid \d+: SIGHUP|cwd=)")
_REJECTED_RELAY_RE = re.compile(r"\brejected RCPT <[^>]*>: relay not permitted")
# One field of a line: quoted strings, (HELO) and [address] kept whole, so that text a client
# chose cannot pose as a field of Exim's.
_TOKEN_RE = re.compile(r'(?:"(?:[^"\\]|\\.)*"|\([^)]*\)|\[[^\]]*\]|[^\s"(\[])+')
_KEY_RE = re.compile(r"([A-Za-z][A-Za-z0-9]*)=")
_HOST_RE = re.compile(r"H=(?:(?P<name>[^\s(\[]+) )?(?:\((?P<helo>[^)]*)\) )?\[(?P<ip>[^\]]+)\]")


@dataclass(frozen=True, slots=True)
class Arrival:
    """A ``<=`` line: a message accepted."""

    time: datetime
    message_id: str
    sender: str
    client_ip: str
    helo: str
    protocol: str
    authenticator: str
    auth_id: str | None  # None: not authenticated; "": authenticated with an empty id


@dataclass(frozen=True, slots=True)
class Delivery:
    """A ``=>``/``->`` line: a message delivered; ``remote`` when it went to another host."""

    time: datetime
    message_id: str
    recipient: str
    remote: bool


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing an admin should look at."""

    kind: str
    severity: str  # "critical" or "warning"
    subject: str
    count: int
    example: str
    login: str | None = None  # the authenticated id it concerns; "": the empty id

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "severity": self.severity, "subject": self.subject,
                "count": self.count, "example": self.example, "login": self.login}


@dataclass(frozen=True, slots=True)
class LoginFindings:
    """The findings of one login (``None``: of no login) and its remote deliveries."""

    login: str | None
    remote_deliveries: int
    findings: tuple[Finding, ...]

    @property
    def label(self) -> str:
        if self.login is None:
            return "-"
        return self.login or "(empty)"

    def as_dict(self) -> dict[str, object]:
        return {"login": self.login, "remote_deliveries": self.remote_deliveries,
                "findings": [f.as_dict() for f in self.findings]}


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")  # Exim logs local time, naive


def _fields(tokens: list[str], stop: str | None = None) -> dict[str, str]:
    """``KEY=value`` fields, first one of each key; tokens that are no field continue the last.

    *stop*: the key after which nothing is Exim's own any more (``S=`` on an arrival: after it
    come the subject and the recipients, which a client chose).
    """
    fields: dict[str, str] = {}
    key: str | None = None
    for token in tokens:
        match = _KEY_RE.match(token)
        if match is not None:
            key = match.group(1)
            if key == stop:
                break
            if key in fields:
                key = None  # a repeated key is not Exim's: keep the first
                continue
            fields[key] = token
        elif key is not None:
            fields[key] += " " + token
    return fields


def is_exim_line(line: str) -> bool:
    """Whether *line* is one Exim writes to its mainlog: its timestamp, then a message id or
    text only Exim writes.  Pure."""
    if _MESSAGE_RE.match(line) is not None:
        return True
    prefix = _PREFIX_RE.match(line)
    return prefix is not None and _EXIM_TEXT_RE.match(line, prefix.end()) is not None


def parse_line(line: str) -> Arrival | Delivery | None:
    """Parse one mainlog line into an arrival or a delivery; anything else is ``None``."""
    match = _MESSAGE_RE.match(line.rstrip("\n"))
    return None if match is None else _event(match)


def _event(match: re.Match[str]) -> Arrival | Delivery | None:
    flag, _, rest = match["text"].rstrip("\n").partition(" ")
    if flag not in _FLAGS or not rest:
        return None
    try:
        when = _time(match["ts"])
    except ValueError:  # digits in Exim's shape, but no date (month 13): not Exim's
        return None
    message_id = match["id"]
    tokens = _TOKEN_RE.findall(rest)
    if not tokens:
        return None
    address = tokens[0]
    if flag == "<=":
        fields = _fields(tokens[1:], stop="S")
        host = _HOST_RE.match(fields.get("H", ""))
        authenticator, colon, auth_id = fields.get("A", "A=")[2:].partition(":")
        # Client-chosen text with blanks (an ident U= value, a junk HELO) could put an A= or
        # an S= ahead of Exim's own A=: an empty id anywhere on the line is reported as one,
        # so the open relay's signature cannot be hidden behind a decoy (a decoy can only
        # raise the alarm).
        empty = next((t for t in tokens[1:] if t.startswith("A=") and t.endswith(":")
                      and t.count(":") == 1), None)
        if empty is not None:
            authenticator, colon, auth_id = empty[2:-1], ":", ""
        return Arrival(
            time=when, message_id=message_id, sender="" if address == "<>" else address,
            client_ip=host["ip"] if host else "", helo=(host["helo"] or "") if host else "",
            protocol=fields.get("P", "P=")[2:].split(" ", 1)[0],
            authenticator=authenticator,
            auth_id=auth_id if colon else None,
        )
    if flag in {"=>", "->"}:
        # A delivery to another host names it with H=; local transports do not.
        return Delivery(when, message_id, address, remote="H" in _fields(tokens[1:]))
    return None


def _is_loopback_claim(helo: str) -> bool:
    name = helo.strip().lower()
    if name in {"localhost", "localhost.localdomain", "localhost.local"}:
        return True
    literal = name.strip("[]")
    if literal.startswith("ipv6:"):
        literal = literal[5:]
    try:
        return ipaddress.ip_address(literal).is_loopback
    except ValueError:
        return False


def _is_remote_ip(ip: str) -> bool:
    try:
        return not ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


@dataclass
class AuditReport:
    """What the auditor found, with counts for the summary table."""

    lines: int = 0
    recognised: int = 0  # lines Exim wrote (see is_exim_line)
    arrivals: int = 0
    authenticated: int = 0
    remote_deliveries: int = 0
    rejected_relays: int = 0
    findings: list[Finding] = field(default_factory=list)
    remote_by_id: Counter[str] = field(default_factory=Counter)
    remote_by_ip: Counter[str] = field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        return not self.findings

    def verdict(self) -> str:
        critical = [f for f in self.findings if f.severity == "critical"]
        if critical:
            return ("OPEN RELAY: messages were accepted from clients that authenticated with "
                    "an empty id and relayed; see the findings")
        if self.findings:
            return "SUSPICIOUS: see the findings"
        return "CLEAN: no sign of relaying for others"

    def remote_of(self, login: str) -> int:
        """Remote deliveries of messages from *login* ("" : the empty id)."""
        return self.remote_by_id[login or "(empty)"]

    def by_login(self, top: int | None = None) -> tuple[list[LoginFindings], int]:
        """The findings grouped per login, the most relaying logins first (ties: by name);
        with *top*, only that many logins.  Findings of no login come last, always.

        :returns: the groups, and how many logins with findings *top* left out.
        """
        groups: dict[str, list[Finding]] = defaultdict(list)
        unowned: list[Finding] = []
        for finding in self.findings:
            if finding.login is None:
                unowned.append(finding)
            else:
                groups[finding.login].append(finding)
        logins = sorted(groups, key=lambda login: (-self.remote_of(login), login))
        shown = logins if top is None else logins[:top]
        out = [LoginFindings(login, self.remote_of(login), tuple(groups[login]))
               for login in shown]
        if unowned:
            out.append(LoginFindings(None, 0, tuple(unowned)))
        return out, len(logins) - len(shown)

    def as_dict(self, top: int | None = None) -> dict[str, object]:
        groups, left_out = self.by_login(top)
        return {
            "verdict": self.verdict(), "clean": self.clean, "lines": self.lines,
            "arrivals": self.arrivals, "authenticated": self.authenticated,
            "remote_deliveries": self.remote_deliveries, "rejected_relays": self.rejected_relays,
            "findings": [f.as_dict() for f in self.findings],
            "by_login": [g.as_dict() for g in groups], "logins_left_out": left_out,
            "remote_by_id": dict(self.remote_by_id.most_common(20)),
            "remote_by_ip": dict(self.remote_by_ip.most_common(20)),
        }


@dataclass
class _Tally:
    count: int = 0
    example: str = ""


class Auditor:
    """Feed lines with :meth:`feed`, then call :meth:`report`."""

    def __init__(self, *, burst_threshold: int = 100, since: datetime | None = None) -> None:
        self.burst_threshold = burst_threshold
        self.since = since
        self._report = AuditReport()
        # message id -> (auth id or None, client ip): only messages not yet completed.
        self._open: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        self._tallies: dict[tuple[str, str, str, str | None], _Tally] = defaultdict(_Tally)
        # (subject, hour) -> remote deliveries, for bursts; pruned as hours pass.
        self._hourly: Counter[tuple[str, datetime]] = Counter()
        self._burst_seen: set[tuple[str, datetime]] = set()
        self._pruned_hour: datetime | None = None

    def feed(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.feed_line(line)

    def feed_line(self, line: str) -> bool:
        """Take one line; return whether Exim wrote it (see :func:`is_exim_line`)."""
        report = self._report
        report.lines += 1
        match = _MESSAGE_RE.match(line)
        if match is None:
            if not is_exim_line(line):
                return False
            report.recognised += 1
            if _REJECTED_RELAY_RE.search(line):
                report.rejected_relays += 1
            return True
        report.recognised += 1
        event = _event(match)
        if event is None:
            if match["text"].split(" ", 1)[0].rstrip("\n") == "Completed":
                self._open.pop(match["id"], None)
            return True
        if self.since is not None and event.time < self.since:
            return True
        if isinstance(event, Arrival):
            self._arrival(event, line)
        else:
            self._delivery(event)
        return True

    @property
    def open_messages(self) -> int:
        """Messages seen arriving and not yet completed: what the auditor holds in memory."""
        return len(self._open)

    def _note(self, kind: str, severity: str, subject: str, example: str,
              login: str | None) -> None:
        tally = self._tallies[(kind, severity, subject, login)]
        tally.count += 1
        if not tally.example:
            tally.example = example.strip()[:300]

    def _arrival(self, event: Arrival, line: str) -> None:
        report = self._report
        report.arrivals += 1
        self._open[event.message_id] = (event.auth_id, event.client_ip)
        if len(self._open) > MAX_TRACKED:
            self._open.popitem(last=False)
        if event.auth_id is not None:
            report.authenticated += 1
            if event.auth_id == "":
                self._note("empty-auth-id", "critical", f"A={event.authenticator}: "
                           f"from {event.client_ip or 'local'}", line, "")
            elif event.sender and "@" in event.auth_id \
                    and _domain(event.sender) != _domain(event.auth_id):
                self._note("sender-outside-login", "warning",
                           f"{event.auth_id} sent as {event.sender}", line, event.auth_id)
        if event.helo and _is_loopback_claim(event.helo) and _is_remote_ip(event.client_ip):
            self._note("fake-local-helo", "warning",
                       f"{event.client_ip} said HELO {event.helo}", line, event.auth_id)

    def _delivery(self, event: Delivery) -> None:
        if not event.remote:
            return
        report = self._report
        report.remote_deliveries += 1
        auth_id, ip = self._open.get(event.message_id, (None, ""))
        hour = event.time.replace(minute=0, second=0)
        for subject in ((f"id {auth_id or '(empty)'}" if auth_id is not None else None),
                        (f"ip {ip}" if ip else None)):
            if subject is None:
                continue
            if subject.startswith("id "):
                report.remote_by_id[subject[3:]] += 1
            else:
                report.remote_by_ip[subject[3:]] += 1
            self._hourly[(subject, hour)] += 1
            if self._hourly[(subject, hour)] > self.burst_threshold \
                    and (subject, hour) not in self._burst_seen:
                self._burst_seen.add((subject, hour))
                self._note("relay-burst", "warning", subject,
                           f"more than {self.burst_threshold} remote deliveries in the hour "
                           f"from {hour:%Y-%m-%d %H}:00",
                           auth_id if subject.startswith("id ") else None)
        self._prune_hours(hour)

    def _prune_hours(self, now: datetime) -> None:
        # Only when the hour moves on: counters older than two hours can no longer burst.
        if now == self._pruned_hour:
            return
        self._pruned_hour = now
        cutoff = now - timedelta(hours=2)
        for key in [k for k in self._hourly if k[1] < cutoff]:
            del self._hourly[key]
        self._burst_seen = {k for k in self._burst_seen if k[1] >= cutoff}

    def report(self) -> AuditReport:
        report = self._report
        order = {"critical": 0, "warning": 1}
        report.findings = sorted(
            (Finding(kind, severity, subject, tally.count, tally.example, login)
             for (kind, severity, subject, login), tally in self._tallies.items()),
            key=lambda f: (order[f.severity], f.kind, -f.count, f.subject, f.login or ""),
        )
        return report
