"""``eximauthd doctor --smtp``: does the running MTA refuse what an open relay accepts?

A live self-test of the admin's own MTA over SMTP.  It never sends a message: every session
stops at RCPT (no DATA, ever), resets the transaction and quits, so nothing can leave the host
even where a check fails.  The remote recipient and the foreign senders are on the reserved
domains ``example.net``/``example.org``/``example.com`` (RFC 2606): a domain no MTA holds as
local, so the recipient is a relay, and one no mail could reach were it ever sent.

What it checks, each a :class:`~eximauthd.core.checks.CheckResult`:

- unauthenticated relay to a remote domain is refused (at MAIL or RCPT);
- AUTH PLAIN and AUTH LOGIN with empty credentials, and with an unknown user and an empty
  password (the seed's hole), are refused;
- AUTH is not offered before STARTTLS, and is offered after it (certificate not verified: it is
  the local host; the real login of ``--user`` to another host needs a valid certificate);
- with a real login (``--user``): sending as itself to a remote domain is accepted (the control
  that makes the refusals mean something), and a foreign sender, look-alikes of the user's own
  address (the same local part at another domain, the domain as a prefix of another, a Cyrillic
  homoglyph of the domain) and the null sender are refused at MAIL or RCPT.

The judging of observed replies (the ``judge_*`` functions) is pure; :func:`run` is the I/O.
A temporary refusal (4xx) is a warning, not a pass: it is no decision, and a deferring
eximauthd (stopped, database down) gives exactly that.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ..core.checks import CheckResult

__all__ = [
    "Reply",
    "Session",
    "foreign_senders",
    "is_loopback",
    "judge_auth_advertising",
    "judge_auth_refused",
    "judge_login",
    "judge_own_sender",
    "judge_sender_refused",
    "judge_unauthenticated_relay",
    "remote_domains",
    "run",
]

RESERVED_DOMAINS = ("example.net", "example.org", "example.com")
SNIPPETS_FIX = ("install the eximauthd snippets (`eximauthd exim install --layout ...`) and "
                "remove the old authenticators (docs/exim.md), then "
                "`eximauthd lint-exim-config`")
SENDER_FIX = ("include eximauthd-rcpt-acl.conf at the top of the rcpt ACL, before any "
              "`accept authenticated = *` (docs/exim.md)")
TLS_FIX = ("advertise AUTH only inside TLS: the eximauthd snippets' EXIMAUTHD_ADVERTISE "
           "(or auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}})")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: its code and its text (lines joined)."""

    code: int
    text: str = ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()[:120]


# --- judging (pure) ----------------------------------------------------------------------------

def _refusal(what: str, step: str, reply: Reply, fix: str) -> CheckResult:
    """A reply that was meant to refuse: 5xx passes, 4xx is a warning, else FAIL (also a code
    no SMTP server sends, such as 999: that is no refusal)."""
    if 500 <= reply.code < 600:
        return CheckResult.ok(f"{what}: refused at {step} ({reply.code})")
    if 400 <= reply.code < 500:
        return CheckResult.warn(what, f"deferred at {step} ({reply}): no decision was made",
                                "is eximauthd running and its database up? `eximauthd doctor` "
                                "without --smtp")
    return CheckResult.fail(what, f"accepted at {step} ({reply})", fix)


def judge_unauthenticated_relay(mail: Reply, rcpt: Reply | None) -> CheckResult:
    """MAIL and RCPT to a remote domain without AUTH: must be refused at one of them."""
    what = "smtp: unauthenticated relay to a remote domain"
    fix = ("deny RCPT to non-local domains unless authenticated (or the client is in "
           "relay_from_hosts; run from another address with --smtp-source)")
    if rcpt is None or mail.code >= 400:
        return _refusal(what, "MAIL", mail, fix)
    return _refusal(what, "RCPT", rcpt, fix)


def judge_auth_refused(label: str, reply: Reply) -> CheckResult:
    """An AUTH that must fail (empty credentials, unknown user): 235 is the open relay."""
    what = f"smtp: {label}"
    if reply.code == 235 or 200 <= reply.code < 300:
        return CheckResult.fail(what, f"authenticated ({reply}): this is the open relay",
                                SNIPPETS_FIX)
    return _refusal(what, "AUTH", reply, SNIPPETS_FIX)


def judge_auth_advertising(before_tls: bool, starttls: Reply | None,
                           after_tls: bool | None) -> list[CheckResult]:
    """AUTH in EHLO before STARTTLS (must not be), STARTTLS itself, AUTH after it (should be).

    *before_tls*/*after_tls*: whether EHLO listed AUTH; *starttls* is None when EHLO did not
    offer it, *after_tls* None when TLS was not reached.
    """
    results = []
    if before_tls:
        results.append(CheckResult.fail("smtp: AUTH offered before STARTTLS",
                                        "passwords may cross the network in clear", TLS_FIX))
    else:
        results.append(CheckResult.ok("smtp: AUTH not offered before STARTTLS"))
    if starttls is None:
        results.append(CheckResult.fail("smtp: STARTTLS", "not offered in EHLO",
                                        "set tls_certificate and tls_privatekey "
                                        "(Debian: MAIN_TLS_ENABLE = yes)"))
    elif starttls.code != 220 or after_tls is None:
        results.append(CheckResult.fail("smtp: STARTTLS", f"failed ({starttls})",
                                        "check the certificate and key Exim is given"))
    elif after_tls:
        results.append(CheckResult.ok("smtp: AUTH offered after STARTTLS"))
    else:
        results.append(CheckResult.warn("smtp: AUTH after STARTTLS", "not offered: no client "
                                        "can log in", SNIPPETS_FIX))
    return results


def judge_login(user: str, reply: Reply) -> CheckResult:
    """The real login of ``--user``: it must succeed for the sender checks to mean anything."""
    what = f"smtp: AUTH PLAIN as {user}"
    if reply.code == 235:
        return CheckResult.ok(what)
    return CheckResult.fail(what, f"refused ({reply}); the sender checks were not run",
                            "check the password, and `eximauthd check` and the mainlog")


def judge_own_sender(user: str, mail: Reply, rcpt: Reply | None) -> CheckResult:
    """The control: the user's own address to a remote domain is accepted."""
    what = f"smtp: {user} sending as itself to a remote domain"
    if rcpt is not None and 200 <= rcpt.code < 300 and 200 <= mail.code < 300:
        return CheckResult.ok(f"{what}: accepted at RCPT (no DATA sent)")
    step, reply = ("MAIL", mail) if rcpt is None else ("RCPT", rcpt)
    return CheckResult.warn(what, f"refused at {step} ({reply}): the refusals below prove "
                            "less", "see the mainlog")


def judge_sender_refused(label: str, mail: Reply, rcpt: Reply | None) -> CheckResult:
    """A sender the login does not own: must be refused at MAIL or RCPT."""
    what = f"smtp: authenticated relay as {label}"
    if rcpt is None or mail.code >= 400:
        return _refusal(what, "MAIL", mail, SENDER_FIX)
    return _refusal(what, "RCPT", rcpt, SENDER_FIX)


def remote_domains(user: str) -> tuple[str, str]:
    """Two reserved domains other than *user*'s: the recipient's and the foreign sender's."""
    own = user.rpartition("@")[2].lower()
    rest = [d for d in RESERVED_DOMAINS if own != d and not own.endswith("." + d)]
    return rest[0], rest[1]


def _homoglyph(domain: str) -> str:
    """*domain* with its first Latin letter that has a Cyrillic twin replaced by the twin."""
    twins = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441",
             "x": "\u0445", "y": "\u0443", "i": "\u0456"}
    for index, char in enumerate(domain):
        if char in twins:
            return domain[:index] + twins[char] + domain[index + 1:]
    return domain + "\u0430"


def foreign_senders(user: str) -> list[tuple[str, str]]:
    """(label, sender) pairs *user* may not send as: foreign, look-alikes, the null sender."""
    local, _, domain = user.rpartition("@")
    _, foreign = remote_domains(user)
    return [
        ("a foreign sender", f"postmaster@{foreign}"),
        ("the same local part at another domain", f"{local}@{foreign}"),
        ("its domain as a prefix of another", f"{local}@{domain}.{foreign}"),
        ("a homoglyph of its domain", f"{local}@{_homoglyph(domain)}"),
        ("the null sender", ""),
    ]


# --- I/O ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    """Where and how to connect; the password never appears in a repr."""

    host: str
    port: int
    source: str | None = None  # the local address to connect from (relay_from_hosts)
    timeout: float = 30.0  # each read or write
    user: str = ""
    password: str = field(default="", repr=False)
    # The whole session: a server that drips a byte within each timeout, or sends reply
    # lines without end, is cut off here.
    deadline: float = 120.0

    @contextlib.contextmanager
    def connect(self, *, tls: bool, verify: bool = False) -> Iterator[smtplib.SMTP]:
        """An SMTP session after EHLO (and STARTTLS and EHLO again when *tls* and offered:
        :func:`_in_tls` tells); *verify*: the server's certificate and name are checked.

        Leaving it resets the transaction and quits, whatever happened inside.
        """
        source = (self.source, 0) if self.source else None
        smtp = _BoundedSMTP(timeout=self.timeout, source_address=source)
        # What SMTP(host) sets before connecting, and starttls() names the server by; connect()
        # is called here so that the watchdog also covers the greeting.
        smtp._host = self.host
        watchdog = threading.Timer(self.deadline, _cut_off, (smtp,))
        watchdog.daemon = True
        watchdog.start()
        try:
            smtp.connect(self.host, self.port)
        except BaseException:
            watchdog.cancel()
            smtp.close()
            raise
        try:
            smtp.ehlo()
            if tls and smtp.has_extn("starttls"):
                smtp.starttls(context=ssl.create_default_context() if verify
                              else _unverified_tls())
                smtp.ehlo()
            yield smtp
        finally:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                smtp.rset()
            with contextlib.suppress(OSError, smtplib.SMTPException):
                smtp.quit()
            watchdog.cancel()
            smtp.close()


# More lines than any EHLO or error reply has; smtplib itself reads them without end.
MAX_REPLY_LINES = 100


class _BoundedSMTP(smtplib.SMTP):
    """smtplib's client, reading at most :data:`MAX_REPLY_LINES` lines per reply."""

    _host: str  # smtplib's own, untyped

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:
            self.file = _LineBudget(self.sock.makefile("rb"))
        if isinstance(self.file, _LineBudget):
            self.file.left = MAX_REPLY_LINES
        return super().getreply()


class _LineBudget:
    """A reply's lines, counted; smtplib turns the OSError into SMTPServerDisconnected."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.left = MAX_REPLY_LINES

    def readline(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise OSError(f"a reply of more than {MAX_REPLY_LINES} lines")
        self.left -= 1
        return self.file.readline(size)

    def close(self) -> None:
        self.file.close()


def _cut_off(smtp: smtplib.SMTP) -> None:
    # Shut the connection down under a read that would go on (a drip): the read then ends.
    # socket.socket's own shutdown, not SSLSocket's, which would drop its TLS state under
    # the reading thread.
    sock = smtp.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _unverified_tls() -> ssl.SSLContext:
    # The admin's own MTA on this host, often with a self-signed certificate: what is tested
    # is whether AUTH needs TLS, not who signed the certificate.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def is_loopback(host: str) -> bool:
    """Whether *host* is this host by its very name: a loopback address or ``localhost``."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"


def _in_tls(smtp: smtplib.SMTP) -> bool:
    return isinstance(smtp.sock, ssl.SSLSocket)


def _command(smtp: smtplib.SMTP, line: str) -> Reply:
    """Send one command line as UTF-8 (smtplib would refuse a homoglyph) and read the reply."""
    smtp.send(line.encode("utf-8") + b"\r\n")
    code, text = smtp.getreply()
    return Reply(code, text.decode("utf-8", "replace").replace("\n", " "))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _envelope(smtp: smtplib.SMTP, sender: str, recipient: str) -> tuple[Reply, Reply | None]:
    """MAIL and, if accepted, RCPT; then RSET.  Never DATA."""
    # A non-ASCII address needs SMTPUTF8 where offered (so the policy, not the syntax, is
    # tested); where it is not offered, the MTA refuses it at MAIL for any client alike.
    utf8 = " SMTPUTF8" if not sender.isascii() and smtp.has_extn("smtputf8") else ""
    mail = _command(smtp, f"MAIL FROM:<{sender}>{utf8}")
    rcpt = _command(smtp, f"RCPT TO:<{recipient}>") if 200 <= mail.code < 300 else None
    _command(smtp, "RSET")
    return mail, rcpt


def _auth_plain(smtp: smtplib.SMTP, user: str, password: str) -> Reply:
    return _command(smtp, f"AUTH PLAIN {_b64(chr(0) + user + chr(0) + password)}")


def _auth_login(smtp: smtplib.SMTP, user: str, password: str) -> Reply:
    reply = _command(smtp, "AUTH LOGIN")
    for answer in (user, password):
        if reply.code != 334:
            return reply
        reply = _command(smtp, _b64(answer))  # an empty answer is an empty line
    return reply


Check = Callable[[Session, str], list[CheckResult]]


def _check_relay_and_tls(session: Session, recipient: str) -> list[CheckResult]:
    with session.connect(tls=False) as smtp:
        before = smtp.has_extn("auth")
        mail, rcpt = _envelope(smtp, f"eximauthd-doctor@{recipient.rpartition('@')[2]}",
                               recipient)
        results = [judge_unauthenticated_relay(mail, rcpt)]
        if not smtp.has_extn("starttls"):
            return [*results, *judge_auth_advertising(before, None, None)]
        try:
            smtp.starttls(context=_unverified_tls())
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            text = error.decode("utf-8", "replace") if isinstance(error, bytes) else error
            starttls = Reply(exc.smtp_code, text)
            return [*results, *judge_auth_advertising(before, starttls, None)]
        smtp.ehlo()
        return [*results, *judge_auth_advertising(before, Reply(220), smtp.has_extn("auth"))]


# The seed's hole: an unknown user's lookup is empty, and so is the password compared with it.
EMPTY_LOGINS = (
    ("AUTH PLAIN with empty user and password", _auth_plain, ""),
    ("AUTH PLAIN with an unknown user and an empty password", _auth_plain, "unknown"),
    ("AUTH LOGIN with empty user and password", _auth_login, ""),
    ("AUTH LOGIN with an unknown user and an empty password", _auth_login, "unknown"),
)


def _check_empty_logins(session: Session, _recipient: str) -> list[CheckResult]:
    results = []
    for label, auth, who in EMPTY_LOGINS:
        # One session each: after a (wrongly) accepted AUTH, Exim refuses another with 503.
        user = f"eximauthd-doctor-{who}@example.invalid" if who else ""
        with session.connect(tls=True) as smtp:
            results.append(judge_auth_refused(label, auth(smtp, user, "")))
    return results


def _check_senders(session: Session, recipient: str) -> list[CheckResult]:
    if not session.user:
        return []
    # The real password goes to this host's own MTA over any TLS; to another host only when
    # its certificate is valid for its name, or anyone on the path could take it.
    with session.connect(tls=True, verify=not is_loopback(session.host)) as smtp:
        if not _in_tls(smtp):
            # A real password is not sent in clear, not even to test.
            return [CheckResult.warn(f"smtp: AUTH PLAIN as {session.user}",
                                     "not tried: no STARTTLS, the password would cross in clear",
                                     "enable TLS in Exim (see the STARTTLS line)")]
        login = judge_login(session.user, _auth_plain(smtp, session.user, session.password))
        if login.failed:
            return [login]
        results = [login, judge_own_sender(session.user,
                                           *_envelope(smtp, session.user, recipient))]
        for label, sender in foreign_senders(session.user):
            results.append(judge_sender_refused(f"{label} <{sender}>",
                                                *_envelope(smtp, sender, recipient)))
        return results


CHECKS: tuple[tuple[str, Check], ...] = (
    ("unauthenticated relay and TLS", _check_relay_and_tls),
    ("empty credentials", _check_empty_logins),
    ("senders of a real login", _check_senders),
)


def run(session: Session) -> list[CheckResult]:
    """Every check against the MTA at *session*; a connection that fails is one FAIL line."""
    recipient = f"eximauthd-doctor@{remote_domains(session.user)[0]}"
    results: list[CheckResult] = []
    for name, check in CHECKS:
        try:
            results.extend(check(session, recipient))
        except (OSError, smtplib.SMTPException, UnicodeError) as exc:
            # UnicodeError: a host name IDNA cannot encode ("a..b"), from getaddrinfo.
            results.append(CheckResult.fail(
                f"smtp {session.host}:{session.port}: {name}",
                f"{type(exc).__name__}: {exc}"[:200],
                "is the MTA listening there? (exim -bP daemon_smtp_ports local_interfaces)"))
            if isinstance(exc, ConnectionRefusedError):
                break
    return results
