"""A private Exim 4.96 daemon and an SMTP sink, on free loopback ports, for end-to-end tests.

The Exim configuration is a minimal main section plus the shipped snippets, included exactly as
an admin would.  Everything Exim routes to a non-local domain goes to an aiosmtpd sink, so an
accepted relay is observable.  Exim runs as root with -C (it then keeps the caller's uid), with
spool, logs and pid file in a temporary directory.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session

from .servicekit import free_port

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "eximauthd" / "share" / "exim-snippets"
EXIM = shutil.which("exim4") or "/usr/sbin/exim4"

MAIN_TEMPLATE = """\
primary_hostname = mx.example.test
domainlist local_domains = example.test : strict.test
qualify_domain = example.test
spool_directory = {tmp}/spool
log_file_path = {tmp}/log/%slog
pid_file_path = {tmp}/exim.pid
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
tls_certificate = {tmp}/cert.pem
tls_privatekey = {tmp}/key.pem
tls_advertise_hosts = *
host_lookup =
rfc1413_hosts =
acl_smtp_rcpt = acl_check_rcpt
{macros}
.include {snippets}/eximauthd-main.conf

begin acl

acl_check_rcpt:
  .include {snippets}/eximauthd-rcpt-acl.conf
  accept  authenticated = *
  accept  domains = +local_domains
  deny    message = relay not permitted

begin routers

to_sink:
  driver = manualroute
  domains = ! +local_domains
  transport = to_sink
  route_list = * 127.0.0.1
  self = send

local_mailbox:
  driver = accept
  domains = +local_domains
  transport = local_mailbox

begin transports

to_sink:
  driver = smtp
  port = {sink_port}
  allow_localhost
  hosts_avoid_tls = *

local_mailbox:
  driver = appendfile
  # One file for all local mail: a path built from $local_part would be tainted.
  file = {tmp}/mail/local
  envelope_to_add
  user = Debian-exim

begin retry
*   *   F,1m,10s

begin authenticators
.include {snippets}/eximauthd-auth.conf
"""


class Sink:
    """An aiosmtpd handler that keeps every envelope it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, _server: object, _session: Session,
                          envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def recipients(self) -> list[str]:
        return [r for e in self.envelopes for r in e.rcpt_tos]


@dataclass
class Exim:
    """A running private Exim daemon."""

    tmp: Path
    port: int
    config: Path
    process: subprocess.Popen[bytes]
    sink: Sink = field(repr=False)

    def mainlog(self) -> str:
        path = self.tmp / "log" / "mainlog"
        return path.read_text("utf-8", "replace") if path.exists() else ""

    def wait_for_sink(self, count: int, timeout: float = 15.0) -> bool:
        """Wait until the sink has *count* envelopes (delivery is asynchronous)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.sink.envelopes) >= count:
                return True
            time.sleep(0.05)
        return False

    def local_mail(self) -> str:
        """Everything delivered to local mailboxes (with Envelope-to: headers)."""
        path = self.tmp / "mail" / "local"
        return path.read_text() if path.exists() else ""


def _make_certificate(tmp: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=mx.example.test", "-keyout", str(tmp / "key.pem"),
         "-out", str(tmp / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )


def build_handwritten(tmp: Path, port: int, sink_port: int, socket_path: str) -> Path:
    """A hand-written config: minimal main section + the three generic snippets."""
    macros = f"EXIMAUTHD_SOCKET = {socket_path}\nEXIMAUTHD_TIMEOUT = 5s\n"
    config = tmp / "exim.conf"
    config.write_text(MAIN_TEMPLATE.format(tmp=tmp, port=port, sink_port=sink_port,
                                           snippets=SNIPPETS, macros=macros))
    return config


def dovecot_socket(socket_path: str) -> str:
    """Where the rigs put the service's Dovecot socket: beside its readsocket one."""
    return str(Path(socket_path).with_name("dovecot-auth.sock"))


def build_handwritten_dovecot(tmp: Path, port: int, sink_port: int, socket_path: str) -> Path:
    """The hand-written config with eximauthd-dovecot-auth.conf (Exim's `dovecot` driver)
    instead of eximauthd-auth.conf; the rcpt ACL still asks over the readsocket socket."""
    config = build_handwritten(tmp, port, sink_port, socket_path)
    text = config.read_text().replace(
        "EXIMAUTHD_TIMEOUT = 5s\n",
        f"EXIMAUTHD_TIMEOUT = 5s\nEXIMAUTHD_DOVECOT_SOCKET = {dovecot_socket(socket_path)}\n", 1)
    config.write_text(text.replace(f".include {SNIPPETS}/eximauthd-auth.conf",
                                   f".include {SNIPPETS}/eximauthd-dovecot-auth.conf"))
    return config


DEBIAN_TEST_MAIN = """\
# test rig only: a private daemon on a free port, spool and logs in a temp dir
EXIMAUTHD_SOCKET = {socket_path}
SPOOLDIR = {tmp}/spool
MAIN_TLS_ENABLE = yes
MAIN_TLS_CERTIFICATE = {tmp}/cert.pem
MAIN_TLS_PRIVATEKEY = {tmp}/key.pem
MAIN_LOCAL_INTERFACES = 127.0.0.1
log_file_path = {tmp}/log/%slog
pid_file_path = {tmp}/exim.pid
daemon_smtp_ports = {port}
"""

DEBIAN_TEST_ROUTERS = """\
# test rig only: remote domains go to the SMTP sink, bob@ local domains to a file
test_sink:
  driver = manualroute
  domains = ! +local_domains
  transport = test_sink
  route_list = * 127.0.0.1
  self = send

test_local:
  driver = accept
  domains = +local_domains
  local_parts = bob
  transport = test_local
"""

DEBIAN_TEST_TRANSPORTS = """\
test_sink:
  driver = smtp
  port = {sink_port}
  allow_localhost
  hosts_avoid_tls = *

test_local:
  driver = appendfile
  file = {tmp}/mail/local
  envelope_to_add
  user = Debian-exim
"""


Builder = Callable[[Path, int, int, str], Path]


def _debian_tree(tmp: Path, fmt: dict[str, object], *, split: bool,
                 dovecot: bool = False) -> Path:
    """A copy of Debian's stock /etc/exim4 set up for a private daemon: settings for an
    internet site, and test-only files (split: conf.d files that sort before and apart from the
    drop-ins; monolithic: exim4.conf.localmacros) for the port, spool, TLS and sink."""
    etc = tmp / "etc-exim4"
    shutil.copytree("/etc/exim4", etc)
    settings = etc / "update-exim4.conf.conf"
    text = settings.read_text()
    for key, value in (("dc_use_split_config", "true" if split else "false"),
                       ("dc_eximconfig_configtype", "internet"),
                       ("dc_other_hostnames", "example.test : strict.test"),
                       ("dc_local_interfaces", "127.0.0.1"), ("dc_relay_nets", "")):
        text = re.sub(rf"^{key}=.*$", f"{key}='{value}'", text, flags=re.MULTILINE)
    settings.write_text(text)
    rig_main = DEBIAN_TEST_MAIN.format(**fmt)
    if dovecot:
        rig_main += f"EXIMAUTHD_DOVECOT_SOCKET = {dovecot_socket(str(fmt['socket_path']))}\n"
    if split:
        (etc / "conf.d/main/000_a_test_rig").write_text(rig_main)
        (etc / "conf.d/router/050_test_rig").write_text(DEBIAN_TEST_ROUTERS)
        (etc / "conf.d/transport/05_test_rig").write_text(DEBIAN_TEST_TRANSPORTS.format(**fmt))
    else:
        (etc / "exim4.conf.localmacros").write_text(rig_main)
    return etc


def _generate_split(tmp: Path, etc: Path) -> Path:
    config = tmp / "exim4.conf"
    subprocess.run(["update-exim4.conf", "-d", str(etc), "-o", str(config)], check=True,
                   capture_output=True, timeout=60)
    config.chmod(0o644)
    return config


def _generate_monolithic(tmp: Path, etc: Path, fmt: dict[str, object]) -> Path:
    """update-exim4.conf tests for /etc/exim4/exim4.conf.localmacros by its hard-coded path even
    with -d, so it runs in a private mount namespace with the copy bound over /etc/exim4.  The
    generated config then names /etc/exim4/eximauthd-*, which the rig points at the copy, and
    gets the sink routers (the template has no place for site routers)."""
    config = tmp / "exim4.conf"
    subprocess.run(["unshare", "-m", "sh", "-c",
                    'mount --bind "$1" /etc/exim4 && update-exim4.conf -o "$2"', "sh",
                    str(etc), str(config)], check=True, capture_output=True, timeout=60)
    text = config.read_text().replace("/etc/exim4/eximauthd-", f"{etc}/eximauthd-")
    text = text.replace("\nbegin routers\n", "\nbegin routers\n" + DEBIAN_TEST_ROUTERS, 1)
    text = text.replace("\nbegin transports\n",
                        "\nbegin transports\n" + DEBIAN_TEST_TRANSPORTS.format(**fmt), 1)
    config.write_text(text)
    config.chmod(0o644)
    for path in (etc, etc / "eximauthd-auth.conf", etc / "eximauthd-rcpt-acl"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return config


def _point_rcpt_acl_at(etc: Path, socket_path: str) -> None:
    """The monolithic rcpt ACL spells the socket out (macros do not reach it): the rig's."""
    acl = etc / "eximauthd-rcpt-acl"
    acl.write_text(acl.read_text().replace("{/run/eximauthd/eximauthd.sock}",
                                           "{" + socket_path + "}"))


def build_debian_split(tmp: Path, port: int, sink_port: int, socket_path: str,
                       dovecot: bool = False) -> Path:
    """Debian's stock /etc/exim4 (split mode) + the debian/conf.d drop-ins copied by hand, as
    shipped, through update-exim4.conf (with *dovecot*, the `dovecot` driver's variant of
    conf.d/auth/20_eximauthd over the readsocket one)."""
    fmt = {"tmp": tmp, "port": port, "sink_port": sink_port, "socket_path": socket_path}
    etc = _debian_tree(tmp, fmt, split=True, dovecot=dovecot)
    shutil.copytree(SNIPPETS / "debian" / "conf.d", etc / "conf.d", dirs_exist_ok=True)
    if dovecot:
        shutil.copytree(SNIPPETS / "debian" / "dovecot" / "conf.d", etc / "conf.d",
                        dirs_exist_ok=True)
    return _generate_split(tmp, etc)


def build_debian_split_dovecot(tmp: Path, port: int, sink_port: int, socket_path: str) -> Path:
    """Debian split with the `dovecot` driver's drop-in (debian/dovecot)."""
    return build_debian_split(tmp, port, sink_port, socket_path, dovecot=True)


def build_debian_monolithic(tmp: Path, port: int, sink_port: int, socket_path: str) -> Path:
    """Debian's stock template + debian/monolithic applied by hand (patch, copies, localmacros
    appended), through update-exim4.conf."""
    fmt = {"tmp": tmp, "port": port, "sink_port": sink_port, "socket_path": socket_path}
    etc = _debian_tree(tmp, fmt, split=False)
    mono = SNIPPETS / "debian" / "monolithic"
    subprocess.run(["patch", "-p1", "-d", str(etc), "-i", str(mono / "exim4.conf.template.patch")],
                   check=True, capture_output=True, timeout=30)
    shutil.copy(SNIPPETS / "debian" / "conf.d" / "auth" / "20_eximauthd",
                etc / "eximauthd-auth.conf")
    shutil.copy(mono / "eximauthd-rcpt-acl", etc / "eximauthd-rcpt-acl")
    _point_rcpt_acl_at(etc, socket_path)
    with (etc / "exim4.conf.localmacros").open("a") as macros:
        macros.write((mono / "exim4.conf.localmacros").read_text())
    return _generate_monolithic(tmp, etc, fmt)


def eximauthd_argv() -> list[str]:
    """The ``eximauthd`` command of the test venv."""
    return [sys.executable, "-m", "eximauthd"]


def eximauthd_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``eximauthd`` command, as an admin runs it."""
    return subprocess.run([*eximauthd_argv(), *args], capture_output=True, text=True,
                          timeout=180, check=False)


def build_installed(layout: str, auth: str = "readsocket") -> Builder:
    """A builder: Debian's stock /etc/exim4 copy with ``eximauthd exim install --layout
    *layout* --auth *auth* --etc COPY`` run on it, then generated as an admin's
    update-exim4.conf would (with ``dovecot``, the rig's EXIMAUTHD_DOVECOT_SOCKET is
    :func:`dovecot_socket`)."""
    def build(tmp: Path, port: int, sink_port: int, socket_path: str) -> Path:
        fmt = {"tmp": tmp, "port": port, "sink_port": sink_port, "socket_path": socket_path}
        etc = _debian_tree(tmp, fmt, split=layout == "debian-split", dovecot=auth == "dovecot")
        run = eximauthd_cli("exim", "install", "--layout", layout, "--auth", auth,
                            "--etc", str(etc))
        if run.returncode != 0:
            raise RuntimeError(f"exim install failed ({run.returncode}): {run.stderr}")
        if layout == "debian-split":
            return _generate_split(tmp, etc)
        _point_rcpt_acl_at(etc, socket_path)
        return _generate_monolithic(tmp, etc, fmt)
    return build




@contextlib.contextmanager
def running_exim(socket_path: str, build: Builder = build_handwritten) -> Iterator[Exim]:
    """Start the SMTP sink and an Exim daemon that asks eximauthd at *socket_path*."""
    tmp = Path(tempfile.mkdtemp(prefix="exim-", dir="/tmp"))
    # Exim writes its spool and logs as its own user (Debian-exim) even when started by root,
    # and reads included files unprivileged in some phases.
    tmp.chmod(0o755)
    exim_user = pwd.getpwnam("Debian-exim")
    for sub in ("spool", "log", "mail"):
        (tmp / sub).mkdir()
        os.chown(tmp / sub, exim_user.pw_uid, exim_user.pw_gid)
    _make_certificate(tmp)
    for name in ("cert.pem", "key.pem"):  # Exim reads them as Debian-exim
        os.chown(tmp / name, exim_user.pw_uid, exim_user.pw_gid)
    sink = Sink()
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    port = free_port()
    config = build(tmp, port, sink_port, socket_path)
    check = subprocess.run([EXIM, "-C", str(config), "-bV"], capture_output=True, text=True,
                           timeout=30, check=False)
    if check.returncode != 0:
        controller.stop()
        raise RuntimeError(f"exim rejects the config:\n{check.stdout}{check.stderr}")
    process = subprocess.Popen([EXIM, "-C", str(config), "-bdf", "-q30s"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    exim = Exim(tmp, port, config, process, sink)
    try:
        _wait_listening(exim)
        yield exim
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        controller.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_listening(exim: Exim, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exim.process.poll() is not None:
            err = exim.process.stderr.read().decode() if exim.process.stderr else ""
            raise RuntimeError(f"exim exited {exim.process.returncode}: {err}\n{exim.mainlog()}")
        with contextlib.suppress(OSError), smtplib.SMTP("127.0.0.1", exim.port,
                                                        timeout=5) as smtp:
            smtp.noop()
            return
        time.sleep(0.1)
    raise RuntimeError("exim did not start listening:\n" + exim.mainlog())


# --- SMTP probes ---------------------------------------------------------------------------

@dataclass
class Transcript:
    """What a session got: the AUTH reply and each RCPT reply, and DATA's."""

    auth: tuple[int, bytes] | None = None
    mail: tuple[int, bytes] | None = None
    rcpts: list[tuple[int, bytes]] = field(default_factory=list)
    data: tuple[int, bytes] | None = None


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a self-signed test certificate
    return context


def session(exim: Exim, *, plain: tuple[str, str, str] | None = None,
            login: tuple[str, str] | None = None, sender: str = "",
            rcpts: tuple[str, ...] = (), tls: bool = True,
            before_rcpt: object = None, source_ip: str = "127.0.0.2",
            auth: tuple[str, ...] | None = None) -> Transcript:
    """One SMTP session: EHLO, STARTTLS, optional AUTH (raw, so empty fields are possible),
    MAIL, RCPTs and DATA when any RCPT was accepted.

    *auth* is a raw exchange: the AUTH command's argument, then the lines sent while the
    server answers 334 (``("PLAIN", token)`` sends the token after an empty challenge).
    """
    out = Transcript()
    # Debian's stock config lets 127.0.0.1 relay unauthenticated: tests of it connect from
    # another loopback address.
    with smtplib.SMTP("127.0.0.1", exim.port, timeout=30,
                      source_address=(source_ip, 0)) as smtp:
        smtp.ehlo("client.test")
        if tls:
            smtp.starttls(context=_tls_context())
            smtp.ehlo("client.test")
        out.auth = _authenticate(smtp, plain, login, auth)
        if callable(before_rcpt):
            before_rcpt()
        out.mail = smtp.docmd("MAIL", f"FROM:<{sender}>")
        if out.mail[0] != 250:
            return out
        for rcpt in rcpts:
            out.rcpts.append(smtp.docmd("RCPT", f"TO:<{rcpt}>"))
        if any(code == 250 for code, _ in out.rcpts):
            out.data = smtp.data(b"Subject: test\r\n\r\nhello\r\n")
        else:
            smtp.rset()
    return out


def _authenticate(smtp: smtplib.SMTP, plain: tuple[str, str, str] | None,
                  login: tuple[str, str] | None,
                  auth: tuple[str, ...] | None) -> tuple[int, bytes] | None:
    """The AUTH exchange of :func:`session`; its last reply, None without AUTH."""
    reply: tuple[int, bytes] | None = None
    if auth is not None:
        reply = smtp.docmd("AUTH", auth[0])
        for line in auth[1:]:
            if reply[0] != 334:
                break
            reply = smtp.docmd(line)
    elif plain is not None:
        authzid, user, password = plain
        token = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
        reply = smtp.docmd("AUTH", f"PLAIN {token}")
    elif login is not None:
        code, _ = smtp.docmd("AUTH", "LOGIN")
        if code == 334:
            smtp.docmd(base64.b64encode(login[0].encode()).decode())
            reply = smtp.docmd(base64.b64encode(login[1].encode()).decode())
        else:
            reply = (code, _)
    return reply


def exim_available() -> bool:
    return os.access(EXIM, os.X_OK)
