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
    "parse_line",
]

MAX_TRACKED = 200_000

_TS = r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)?(?: [-+]\d{4})?(?: \[\d+\])?"
_ID = r"(?P<id>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4})"
_LINE_RE = re.compile(rf"{_TS} {_ID} (?P<flag><=|=>|->|\*>|\*\*|==) (?P<rest>.*)")
_REJECT_RE = re.compile(rf"{_TS} (?P<rest>.*\brejected RCPT <(?P<rcpt>[^>]*)>.*)")
_HOST_RE = re.compile(r"\bH=(?:(?P<name>[^\s(\[]+) )?(?:\((?P<helo>[^)]*)\) )?\[(?P<ip>[^\]]+)\]")
_AUTH_RE = re.compile(r"\bA=(?P<auth>[^\s:]+):(?P<id>\S*)")
_PROTO_RE = re.compile(r"\bP=(?P<p>\S+)")
_FROM_RE = re.compile(r"\bF=<(?P<f>[^>]*)>")


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

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "severity": self.severity, "subject": self.subject,
                "count": self.count, "example": self.example}


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")  # Exim logs local time, naive


def parse_line(line: str) -> Arrival | Delivery | None:
    """Parse one mainlog line into an arrival or a delivery; anything else is ``None``."""
    match = _LINE_RE.match(line)
    if match is None:
        return None
    rest, flag = match["rest"], match["flag"]
    when, message_id = _time(match["ts"]), match["id"]
    if flag == "<=":
        sender = rest.split(" ", 1)[0]
        host = _HOST_RE.search(rest)
        auth = _AUTH_RE.search(rest)
        proto = _PROTO_RE.search(rest)
        return Arrival(
            time=when, message_id=message_id, sender="" if sender == "<>" else sender,
            client_ip=host["ip"] if host else "", helo=(host["helo"] or "") if host else "",
            protocol=proto["p"] if proto else "",
            authenticator=auth["auth"] if auth else "",
            auth_id=auth["id"] if auth else None,
        )
    if flag in {"=>", "->"}:
        recipient = rest.split(" ", 1)[0]
        # A delivery to another host names it with H=; local transports do not.
        return Delivery(when, message_id, recipient, remote=" H=" in f" {rest}")
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

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict(), "clean": self.clean, "lines": self.lines,
            "arrivals": self.arrivals, "authenticated": self.authenticated,
            "remote_deliveries": self.remote_deliveries, "rejected_relays": self.rejected_relays,
            "findings": [f.as_dict() for f in self.findings],
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
        self._tallies: dict[tuple[str, str, str], _Tally] = defaultdict(_Tally)
        # (subject, hour) -> remote deliveries, for bursts; pruned as hours pass.
        self._hourly: Counter[tuple[str, datetime]] = Counter()
        self._burst_seen: set[tuple[str, datetime]] = set()
        self._pruned_hour: datetime | None = None

    def feed(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.feed_line(line)

    def feed_line(self, line: str) -> None:
        report = self._report
        report.lines += 1
        event = parse_line(line)
        if event is None:
            if " Completed" in line:
                parts = line.split(" ")
                if len(parts) >= 3:
                    self._open.pop(parts[2], None)
            elif "rejected RCPT" in line and "relay not permitted" in line:
                report.rejected_relays += 1
            return
        if self.since is not None and event.time < self.since:
            return
        if isinstance(event, Arrival):
            self._arrival(event, line)
        else:
            self._delivery(event)

    def _note(self, kind: str, severity: str, subject: str, example: str) -> None:
        tally = self._tallies[(kind, severity, subject)]
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
                           f"from {event.client_ip or 'local'}", line)
            elif event.sender and "@" in event.auth_id \
                    and _domain(event.sender) != _domain(event.auth_id):
                self._note("sender-outside-login", "warning",
                           f"{event.auth_id} sent as {event.sender}", line)
        if event.helo and _is_loopback_claim(event.helo) and _is_remote_ip(event.client_ip):
            self._note("fake-local-helo", "warning",
                       f"{event.client_ip} said HELO {event.helo}", line)

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
                           f"from {hour:%Y-%m-%d %H}:00")
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
            (Finding(kind, severity, subject, tally.count, tally.example)
             for (kind, severity, subject), tally in self._tallies.items()),
            key=lambda f: (order[f.severity], f.kind, -f.count, f.subject),
        )
        return report
