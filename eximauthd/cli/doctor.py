"""``eximauthd doctor``: is this host's eximauthd, and the Exim in front of it, set up right?

Each check is a small function of :class:`Context` returning
:class:`~eximauthd.core.checks.CheckResult` lines (``ok``, ``warn`` or ``FAIL`` with the fix);
:data:`CHECKS` runs them in order.  A check that needs what an earlier one failed to establish
(a configuration, a reachable database, a running service) says nothing, so one mistake gives
one FAIL, not a cascade.  To add a check: write ``def check_x(ctx) -> list[CheckResult]`` and
put it in :data:`CHECKS`.

Exit 0 when nothing FAILed (warnings allowed), 1 otherwise; 2 for bad usage (``--smtp``
malformed, the ``--user`` password refused).
"""

from __future__ import annotations

import base64
import grp
import http.client
import os
import re
import shutil
import socket
import stat
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ..config import load_config
from ..core.checks import CheckResult
from ..db import legacyindex, upgrade
from ..db.engine import Database, translate_errors
from ..errors import ConfigError, EximauthdError, SchemaRevisionError
from ..settings import Config, mask_url
from .app import EXIT_NO, EXIT_OK, State, cli, pass_state, password_from_stdin

__all__ = ["CHECKS", "Context", "doctor"]

SOCKET_TIMEOUT_S = 5.0
START_FIX = "start the service: systemctl start eximauthd (or eximauthd serve)"


@dataclass
class Context:
    """What the checks share: the options, and what earlier checks established."""

    config_path: str | None
    exim_config: str | None = None
    user: str = ""
    password: str = field(default="", repr=False)
    smtp: tuple[str, int] | None = None
    smtp_source: str | None = None
    config: Config | None = None
    db: Database | None = None  # set once the database answered
    serving: bool = False  # the socket answered PING


Check = Callable[[Context], list[CheckResult]]


def check_config(ctx: Context) -> list[CheckResult]:
    try:
        ctx.config = load_config(ctx.config_path)
    except ConfigError as exc:
        return [CheckResult.fail("configuration", str(exc),
                                 "correct the file (docs/configuration.md)")]
    return [CheckResult.ok(f"configuration loads: {ctx.config.source}")]


def check_database(ctx: Context) -> list[CheckResult]:
    if ctx.config is None:
        return []
    url = ctx.config.database.url
    what = f"database {mask_url(url)}"
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite") and not Path(parsed.database or "").exists():
        # Opening it would create an empty file: the doctor changes nothing.
        return [CheckResult.fail(what, "the SQLite file does not exist",
                                 "eximauthd db upgrade (or start eximauthd serve)")]
    db = Database(ctx.config.database)
    try:
        current = upgrade.current_revision(db)
    except SchemaRevisionError as exc:
        # It answered: the server and the URL are fine, the version table is not.
        db.dispose()
        return [CheckResult.fail(f"{what}: schema", str(exc),
                                 "keep only the row of the revision the schema is at")]
    except EximauthdError as exc:
        db.dispose()
        return [CheckResult.fail(what, f"unreachable: {exc}",
                                 "check [database] url and that the server runs")]
    ctx.db = db
    head = upgrade.head_revision()
    schema = f"{what}: schema"
    if current == head:
        return [CheckResult.ok(f"{what}: reachable, schema at revision {head}")]
    if current is None:
        return [CheckResult.fail(schema, "no eximauthd tables", "eximauthd db upgrade")]
    newer = upgrade.newer_than_known(current)
    if newer is not None:
        return [CheckResult.fail(schema, newer, "upgrade eximauthd on this host")]
    return [CheckResult.fail(schema, f"at revision {current}, this eximauthd needs {head}",
                             "eximauthd db upgrade")]


def check_legacy_column(ctx: Context) -> list[CheckResult]:
    if ctx.config is None or ctx.db is None or not ctx.config.legacy.configured:
        return []
    from ..migrate.column import check_column  # noqa: PLC0415 -- hashes a probe: only if needed

    legacy = ctx.config.legacy
    what = f"legacy table {legacy.table}"
    try:
        column = check_column(ctx.db, ctx.config)
    except EximauthdError as exc:
        return [CheckResult.fail(what, str(exc), "check [legacy] against the table")]
    if legacy.enabled_column and not _has_column(ctx.db, legacy.table, legacy.enabled_column):
        # migrate reads no enabled column, so check_column does not look for it; logins do.
        return [CheckResult.fail(what, f"no column {legacy.enabled_column}",
                                 "check legacy.enabled_column against the table")]
    if column.fits:
        return [CheckResult.ok(f"{what}: columns exist; {column.describe()}")]
    return [CheckResult.fail(f"{what}: {column.column}", column.describe(),
                             f"eximauthd migrate-passwords --alter-column, or: {column.alter}")]


def _has_column(db: Database, table: str, column: str) -> bool:
    with translate_errors("inspect the legacy table"), db.primary.connect() as conn:
        names = {c["name"].lower() for c in sa.inspect(conn).get_columns(table)}
    return column.lower() in names


def check_legacy_index(ctx: Context) -> list[CheckResult]:
    if ctx.config is None or ctx.db is None or not ctx.config.legacy.configured:
        return []
    try:
        found = legacyindex.check_legacy_index(ctx.db, ctx.config.legacy)
    except EximauthdError:
        return []  # check_legacy_column has said what is wrong with the table
    if found.indexed:
        return [CheckResult.ok(found.summary())]
    # Not a FAIL: logins stay correct, only each one costs a full scan.
    return [CheckResult.warn(found.summary(), "every AUTH and every guess of a spray scans it",
                             f"eximauthd db index-legacy --apply, or: {found.statement};")]


def check_socket(ctx: Context) -> list[CheckResult]:
    if ctx.config is None:
        return []
    sock = ctx.config.socket
    path = os.path.abspath(sock.path)
    directory = os.path.dirname(path)
    gid: int | None = None
    if sock.group:
        try:
            gid = grp.getgrnam(sock.group).gr_gid
        except KeyError:
            return [CheckResult.fail(f"socket group {sock.group}", "no such group",
                                     "groupadd --system " + sock.group + " (docs/service.md)")]
    try:
        dir_info = os.stat(directory)
    except FileNotFoundError:
        return [CheckResult.fail(f"socket directory {directory}", "does not exist",
                                 "systemd-tmpfiles --create eximauthd.conf (contrib/), or "
                                 "create it and give the socket's group search (x) access")]
    results = [_directory_result(directory, dir_info, sock.group, gid)]
    # No socket file: no service, which the PING check says, once.
    return [*results, *_socket_file_results(f"socket {path}", path, sock.mode, sock.group, gid)]


def _socket_file_results(what: str, path: str, mode: str, group: str,
                         gid: int | None) -> list[CheckResult]:
    """The socket file at *path* against its configured *mode* and *group* (*gid*): one line,
    or none when there is no file (the service is not running: a later check says so)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return []
    if not stat.S_ISSOCK(info.st_mode):
        return [CheckResult.fail(what, "is not a socket",
                                 "remove the file, then start the service")]
    problems = []
    found = stat.S_IMODE(info.st_mode)
    if found != int(mode, 8):
        problems.append(f"mode {found:04o}, configured {mode}")
    if gid is not None and info.st_gid != gid:
        problems.append(f"group {_group_name(info.st_gid)}, configured {group}")
    if problems:
        return [CheckResult.fail(what, "; ".join(problems),
                                 "restart the service (it sets both at start)")]
    return [CheckResult.ok(f"{what}: mode {found:04o}, group {_group_name(info.st_gid)}")]


def _directory_result(directory: str, info: os.stat_result, group: str,
                      gid: int | None) -> CheckResult:
    """The socket's group (Exim's way in) must be able to search the directory."""
    mode = stat.S_IMODE(info.st_mode)
    what = f"socket directory {directory}"
    shown = f"mode {mode:04o}, group {_group_name(info.st_gid)}"
    if not stat.S_ISDIR(info.st_mode):
        return CheckResult.fail(what, "is not a directory", "point socket.path into one")
    if gid is None or mode & 0o001 or (info.st_gid == gid and mode & 0o010):
        return CheckResult.ok(f"{what} exists: {shown}")
    return CheckResult.fail(what, f"{shown}: group {group} cannot reach the socket through it",
                            f"chgrp {group} {directory} && chmod g+x {directory} "
                            "(contrib/eximauthd.tmpfiles.conf does both)")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class _UntrustedPeerError(Exception):
    """The process behind the socket may not be given a password."""


def _ask(path: str, line: bytes, *, secret: bool = False) -> str:
    """One request as Exim's ``${readsocket}`` makes it; the answer line.  With *secret*, the
    line is sent only to a trusted peer (:func:`_untrusted_peer`)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(SOCKET_TIMEOUT_S)
        conn.connect(path)
        if secret and (reason := _untrusted_peer(conn, path)):
            raise _UntrustedPeerError(reason)
        conn.sendall(line)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while len(data) < 256 and (chunk := conn.recv(256)):
            data += chunk
    return data.decode("ascii", "replace").strip()


def _untrusted_peer(conn: socket.socket, path: str) -> str | None:
    """Why the process serving *conn* may not receive --user's password, or None.

    Anyone who can bind the configured path (the built-in default socket is in the working
    directory, /tmp say) could answer PING with "yes" and collect the password.  Trusted: root,
    this user, and the owner of the socket's directory (the service's user for /run/eximauthd),
    as the kernel reports the peer (SO_PEERCRED), not as the file claims.
    """
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    directory = os.path.dirname(os.path.abspath(path))
    if uid in {0, os.geteuid(), os.stat(directory).st_uid}:
        return None
    return (f"its process runs as uid {uid}: neither root, you, nor the owner of {directory}; "
            "the password was not sent")


def check_ping(ctx: Context) -> list[CheckResult]:
    if ctx.config is None:
        return []
    path = ctx.config.socket.path
    try:
        answer = _ask(path, b"PING\n")
    except OSError as exc:
        return [CheckResult.fail(f"PING on {path}", f"no answer: {exc.strerror or exc}",
                                 START_FIX)]
    if answer != "yes":
        return [CheckResult.fail(f"PING on {path}", f"answered {answer[:80]!r}: Exim gets 4xx",
                                 "check the service log and the database")]
    ctx.serving = True
    return [CheckResult.ok(f"PING on {path}: yes")]


def check_auth(ctx: Context) -> list[CheckResult]:
    if ctx.config is None or not ctx.user or not ctx.serving:
        return []
    what = f"AUTH PLAIN {ctx.user} on the socket"
    b64 = [base64.b64encode(v.encode("utf-8")).decode("ascii") for v in (ctx.user, ctx.password)]
    try:
        answer = _ask(ctx.config.socket.path, f"AUTH PLAIN {b64[0]} {b64[1]} \n".encode(),
                      secret=True)
    except _UntrustedPeerError as exc:
        return [CheckResult.fail(what, f"not tried: {exc}",
                                 "socket.path in a directory only the service's user may write "
                                 "(contrib/eximauthd.tmpfiles.conf)")]
    except OSError as exc:
        return [CheckResult.fail(what, f"no answer: {exc.strerror or exc}", START_FIX)]
    if answer == "yes":
        return [CheckResult.ok(f"{what}: yes")]
    return [CheckResult.fail(what, f"answered {answer[:80]!r}",
                             f"eximauthd check {ctx.user} tells why; the service log too")]


# An anonymous request: the policy front end answers it without the database or a count.
_POLICY_PROBE = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=\n"
                 b"sender=postmaster@invalid\nrecipient=postmaster@invalid\n\n")


def check_postfix_policy(ctx: Context) -> list[CheckResult]:
    """With [postfix_policy] enabled, its socket answers a request as Postfix sends it."""
    if ctx.config is None or not ctx.config.postfix_policy.enabled or not ctx.serving:
        return []
    path = os.path.abspath(ctx.config.postfix_policy.path)
    what = f"Postfix policy on {path}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(SOCKET_TIMEOUT_S)
            conn.connect(path)
            conn.sendall(_POLICY_PROBE)
            data = b""
            while b"\n\n" not in data and len(data) < 512 and (chunk := conn.recv(512)):
                data += chunk
    except OSError as exc:
        return [CheckResult.fail(what, f"no answer: {exc.strerror or exc}: Postfix answers "
                                 "451 4.3.5 to every recipient", "restart the service and "
                                 "check postfix_policy.path against check_policy_service")]
    answer = data.decode("ascii", "replace").strip()
    if answer != "action=DUNNO":
        return [CheckResult.fail(what, f"answered {answer[:80]!r}",
                                 "check the service log")]
    return [CheckResult.ok(f"{what}: answers")]


def check_http(ctx: Context) -> list[CheckResult]:
    if ctx.config is None:
        return []
    api = ctx.config.http
    if not api.enabled:
        return [CheckResult.ok("HTTP API disabled (http.enabled = false)")]
    what = f"HTTP API http://{api.listen}"
    host, _, port = api.listen.rpartition(":")
    # http.client, not urllib: an http_proxy in the environment must not answer for us.
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=SOCKET_TIMEOUT_S)
    try:
        conn.request("GET", "/healthz")
        answers = conn.getresponse().status == 200
    except http.client.HTTPException:
        answers = False
    except OSError:
        if ctx.serving:
            return [CheckResult.fail(what, "not answering while the socket is",
                                     "check the service log (http.listen)")]
        return [CheckResult.ok(f"{what}: free for the service")]
    finally:
        conn.close()
    if ctx.serving and answers:
        return [CheckResult.ok(f"{what}: /healthz answers")]
    if ctx.serving:
        return [CheckResult.fail(what, "something else answers there", "check http.listen")]
    return [CheckResult.fail(what, "the port is taken while eximauthd is not running",
                             "free the port or change http.listen")]


def check_exim_config(ctx: Context) -> list[CheckResult]:
    from ..exim.configfile import EximConfigError, read_config  # noqa: PLC0415
    from ..exim.lint import lint  # noqa: PLC0415
    from .audit import running_exim_config  # noqa: PLC0415

    path = ctx.exim_config
    if path is None:
        if shutil.which("exim4") is None and shutil.which("exim") is None:
            return [CheckResult.warn("Exim configuration", "no exim4 on PATH",
                                     "--exim-config FILE lints a file")]
        try:
            path = running_exim_config()
        except ConfigError as exc:
            return [CheckResult.fail("Exim configuration", str(exc), "--exim-config FILE")]
    what = f"Exim configuration {path}"
    try:
        findings = lint(read_config([Path(path)]))
    except (OSError, EximConfigError) as exc:
        return [CheckResult.fail(what, f"cannot read: {exc}", "exim -bV -C FILE")]
    if not findings:
        return [CheckResult.ok(f"{what}: no relay mistake found")]
    return [
        (CheckResult.fail if f.severity == "critical" else CheckResult.warn)(
            f"{what}: {f.rule} at {f.where}", f.message, f.fix)
        for f in findings
    ]


def check_dovecot_socket(ctx: Context) -> list[CheckResult]:
    """[dovecot_auth]'s socket, like [socket]'s: group, directory, mode, group owner."""
    if ctx.config is None or not ctx.config.dovecot_auth.enabled:
        return []
    conf = ctx.config.dovecot_auth
    path = os.path.abspath(conf.path)
    what = f"Dovecot auth socket {path}"
    gid: int | None = None
    if conf.group:
        try:
            gid = grp.getgrnam(conf.group).gr_gid
        except KeyError:
            return [CheckResult.fail(f"dovecot_auth.group {conf.group}", "no such group",
                                     f"groupadd --system {conf.group} (docs/service.md)")]
    directory = os.path.dirname(path)
    try:
        dir_info = os.stat(directory)
    except FileNotFoundError:
        return [CheckResult.fail(f"Dovecot auth socket directory {directory}", "does not exist",
                                 "create it (contrib/eximauthd.tmpfiles.conf) or point "
                                 "dovecot_auth.path into the socket's directory")]
    results = [_directory_result(directory, dir_info, conf.group, gid)]
    sock = ctx.config.socket
    if (directory, conf.group) == (os.path.dirname(os.path.abspath(sock.path)), sock.group):
        results = []  # check_socket has said it about this directory and group
    # No socket file: no service, which the handshake check says, once.
    return [*results, *_socket_file_results(what, path, conf.mode, conf.group, gid)]


def _dovecot_greeting_problem(lines: list[str]) -> str | None:
    """What is wrong with a Dovecot auth server's unprompted greeting, as Exim's and Postfix's
    clients read it (VERSION 1, MECH PLAIN and LOGIN before SPID, DONE); None if nothing."""
    fields = [line.split("\t") for line in lines]
    if not fields or fields[0][:2] != ["VERSION", "1"]:
        return f"first line {lines[0][:40]!r} is not VERSION 1" if lines else "said nothing"
    if fields[-1] != ["DONE"]:
        return "no DONE line"
    names = [f[0] for f in fields]
    if "SPID" not in names:
        return "no SPID line"
    before_spid = {f[1] for f in fields[:names.index("SPID")] if f[0] == "MECH" and len(f) > 1}
    missing = [m for m in ("PLAIN", "LOGIN") if m not in before_spid]
    if missing:
        return f"no MECH {' '.join(missing)} before SPID (Exim: 435 socket type mismatch)"
    return None


class _DovecotConn:
    """A Dovecot auth-client connection, as Exim's dovecot driver opens one."""

    def __init__(self, address: str | tuple[str, int]) -> None:
        """*address*: a Unix socket's path, or a (host, port) of ``[dovecot_auth] listen``."""
        self.buffer = b""
        if isinstance(address, tuple):
            self.sock = socket.create_connection(address, timeout=SOCKET_TIMEOUT_S)
            return
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(SOCKET_TIMEOUT_S)
        try:
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise

    def line(self) -> str | None:
        """The next line; None when the server closed the connection."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > 8192:
                raise OSError("a line longer than 8192 bytes")
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def greeting(self) -> list[str]:
        lines: list[str] = []
        while (line := self.line()) is not None and len(lines) < 64:
            lines.append(line)
            if line == "DONE":
                break
        return lines

    def close(self) -> None:
        self.sock.close()


def check_dovecot_handshake(ctx: Context) -> list[CheckResult]:
    """The greeting on the Unix socket and, when ``listen`` is set, on its TCP port."""
    # No PING answer: the service is down, which check_ping has FAILed once already.
    if ctx.config is None or not ctx.config.dovecot_auth.enabled or not ctx.serving:
        return []
    conf = ctx.config.dovecot_auth
    results = [_dovecot_handshake(f"Dovecot handshake on {conf.path}", conf.path)]
    if conf.listen:
        host, _, port = conf.listen.rpartition(":")
        results.append(_dovecot_handshake(f"Dovecot handshake on tcp:{conf.listen}",
                                          (host.strip("[]"), int(port))))
    return results


def _dovecot_handshake(what: str, address: str | tuple[str, int]) -> CheckResult:
    try:
        conn = _DovecotConn(address)
    except OSError as exc:
        # The service answers PING: it was started before [dovecot_auth] was enabled.
        return CheckResult.fail(what, f"no answer: {exc.strerror or exc}",
                                "restart the service (systemctl restart eximauthd): it "
                                "opens the Dovecot socket at start when enabled")
    try:
        lines = conn.greeting()
        conn.sock.sendall(f"VERSION\t1\t0\nCPID\t{os.getpid()}\n".encode())
    except OSError as exc:
        return CheckResult.fail(what, f"broken: {exc.strerror or exc}", "check the service log")
    finally:
        conn.close()
    problem = _dovecot_greeting_problem(lines)
    if problem is not None:
        return CheckResult.fail(what, problem, "is it eximauthd's Dovecot socket, not another "
                                "service's? (dovecot_auth.path, dovecot_auth.listen)")
    mechs = " ".join(line.split("\t")[1] for line in lines if line.startswith("MECH\t"))
    return CheckResult.ok(f"{what}: VERSION 1, MECH {mechs} before SPID, DONE")


def check_dovecot_auth(ctx: Context) -> list[CheckResult]:
    """With --user: AUTH PLAIN through the Dovecot socket, as Exim's dovecot driver asks."""
    if ctx.config is None or not ctx.user or not ctx.config.dovecot_auth.enabled \
            or not ctx.serving:
        return []
    path = ctx.config.dovecot_auth.path
    what = f"AUTH PLAIN {ctx.user} on the Dovecot socket"
    resp = base64.b64encode(f"\0{ctx.user}\0{ctx.password}".encode()).decode("ascii")
    try:
        conn = _DovecotConn(path)
    except OSError:
        return []  # the handshake check has FAILed on it
    try:
        if _dovecot_greeting_problem(conn.greeting()) is not None:
            return []
        if reason := _untrusted_peer(conn.sock, path):
            return [CheckResult.fail(f"{what}: not tried", reason,
                                     "check dovecot_auth.path: who else can bind it?")]
        conn.sock.sendall(f"VERSION\t1\t0\nCPID\t{os.getpid()}\nAUTH\t1\tPLAIN\t"
                          f"service=smtp\tnologin\trip=127.0.0.1\tresp={resp}\n".encode())
        answer = conn.line()
    except OSError as exc:
        return [CheckResult.fail(what, f"no answer: {exc.strerror or exc}",
                                 "check the service log")]
    finally:
        conn.close()
    if answer is None:
        return [CheckResult.fail(what, "connection closed: the service cannot decide "
                                 "(Exim answers 435)", "check the service log and the database")]
    fields = answer.split("\t")
    user = next((f.removeprefix("user=") for f in fields[2:] if f.startswith("user=")), "")
    if fields[:2] == ["OK", "1"] and user:
        return [CheckResult.ok(f"{what}: OK user={user}")]
    return [CheckResult.fail(what, f"answered {' '.join(fields[:2])[:40]!r}",
                             f"eximauthd check {ctx.user} tells why; the service log too")]


def check_exim_dovecot_socket(ctx: Context) -> list[CheckResult]:
    """Exim's dovecot authenticators must ask [dovecot_auth]'s socket, and it must be on."""
    from ..exim.configfile import EximConfigError, read_config  # noqa: PLC0415
    from ..exim.lint import dovecot_authenticators  # noqa: PLC0415
    from .audit import running_exim_config  # noqa: PLC0415

    if ctx.config is None:
        return []
    path = ctx.exim_config
    if path is None:
        if shutil.which("exim4") is None and shutil.which("exim") is None:
            return []  # check_exim_config has warned
        try:
            path = running_exim_config()
        except ConfigError:
            return []  # check_exim_config has FAILed on it
    try:
        found = dovecot_authenticators(read_config([Path(path)]))
    except (OSError, EximConfigError):
        return []  # check_exim_config has FAILed on it
    conf = ctx.config.dovecot_auth
    wanted = os.path.abspath(conf.path)
    results = []
    for auth in found:
        what = f"Exim authenticator {auth.name} (driver = dovecot) at {auth.where}"
        if not conf.enabled:
            results.append(CheckResult.fail(
                what, f"asks {auth.socket or '(no server_socket)'} but [dovecot_auth] is "
                "disabled", f"set [dovecot_auth] enabled = true, path = {auth.socket} and "
                "restart eximauthd"))
        elif os.path.abspath(auth.socket or ".") != wanted:
            results.append(CheckResult.fail(
                what, f"server_socket is {auth.socket or '(unset)'}, [dovecot_auth] path is "
                f"{wanted}", f"EXIMAUTHD_DOVECOT_SOCKET = {wanted} in Exim's main section "
                f"(Debian: exim4.conf.localmacros or conf.d/main), or dovecot_auth.path = "
                f"{auth.socket}"))
        else:
            results.append(CheckResult.ok(f"{what}: server_socket is [dovecot_auth] path"))
    return results


def check_smtp(ctx: Context) -> list[CheckResult]:
    if ctx.smtp is None:
        return []
    from ..exim import selftest  # noqa: PLC0415

    host, port = ctx.smtp
    return selftest.run(selftest.Session(host, port, ctx.smtp_source, user=ctx.user,
                                         password=ctx.password))


CHECKS: tuple[Check, ...] = (
    check_config, check_database, check_legacy_column, check_legacy_index, check_socket,
    check_ping, check_auth, check_dovecot_socket, check_dovecot_handshake, check_dovecot_auth,
    check_postfix_policy, check_http, check_exim_config, check_exim_dovecot_socket, check_smtp,
)


def _results(check: Check, ctx: Context) -> list[CheckResult]:
    """The check's lines; an error it did not expect is its one FAIL line, never a traceback."""
    try:
        return check(ctx)
    except EximauthdError as exc:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        return [CheckResult.fail(name, str(exc), "see docs/service.md")]


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    # [0-9], not isdigit(): "²" is a digit to isdigit() and none to int().
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ConfigError(f"--smtp: expected HOST:PORT, got {value[:64]!r}")
    return host, int(port)


@cli.command("doctor")
@click.option("--exim-config", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="The Exim configuration to lint (default: the one exim4 -bP reports).")
@click.option("--user", default="", metavar="ADDRESS",
              help="Also log in as ADDRESS (password: one line on stdin) on the socket and, "
                   "with --smtp, over SMTP.")
@click.option("--smtp", "smtp", default=None, metavar="HOST:PORT",
              help="Self-test the running MTA there (never sends DATA).")
@click.option("--smtp-source", default=None, metavar="IP",
              help="Connect to --smtp from this local address (not one in relay_from_hosts).")
@pass_state
def doctor(state: State, exim_config: str | None, user: str, smtp: str | None,
           smtp_source: str | None) -> None:
    """Check the configuration, database, socket, HTTP API and Exim; one line per check.

    Exit 0: no FAIL; 1: at least one FAIL; 2: bad usage.
    """
    ctx = Context(state.config_path, exim_config, user,
                  smtp=_host_port(smtp) if smtp is not None else None, smtp_source=smtp_source)
    if user:
        try:
            ctx.password = password_from_stdin()
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("--password-stdin", "--user")) from None
        if not ctx.password:
            raise ConfigError("--user: empty password refused")
    failed = False
    try:
        for check in CHECKS:
            for result in _results(check, ctx):
                click.echo(result.line())
                sys.stdout.flush()
                failed = failed or result.failed
    finally:
        if ctx.db is not None:
            ctx.db.dispose()
    sys.exit(EXIT_NO if failed else EXIT_OK)
