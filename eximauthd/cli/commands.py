"""The ``eximauthd`` command.

Exit codes (also in ``docs/cli.md``):

==  =====================================================================================
0   success; for ``check``: the credentials are accepted (yes)
1   ``check`` only: the credentials are refused (no)
2   bad usage or input: unknown option, invalid configuration, malformed address,
    duplicate or missing user, no password given
3   the database could not answer (unreachable, locked, schema missing): nothing was changed
==  =====================================================================================
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NoReturn

import click

from ..auth.authn import Authenticator
from ..auth.throttle import NO_ADDRESS, network_of
from ..config import Config, load_config, mask_url
from ..core.addresses import parse_address
from ..core.hashing import Hasher, Scheme, calibrate, hash_shape, identify_scheme
from ..core.limits import KINDS, format_window, parse_limits
from ..core.protocol import parse_client_ip
from ..core.ratelimit import estimate
from ..db import upgrade
from ..db.accounts import AccountStore, make_account_store
from ..db.counters import AttemptStore, LimitStore, RateStore, utcnow
from ..db.engine import Database
from ..db.grants import Grant, GrantStore
from ..errors import (
    AddressError,
    ConfigError,
    EximauthdError,
    HashingError,
    ProtocolError,
    StorageError,
    UserExistsError,
    UserNotFoundError,
)
from ..files import warn_if_readable_by_others

__all__ = ["EXIT_DB", "EXIT_NO", "EXIT_OK", "EXIT_USAGE", "cli", "main"]

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_DB = 3

_INPUT_ERRORS = (ConfigError, AddressError, UserExistsError, UserNotFoundError)


@dataclass
class _State:
    """What a command needs, built on first use so ``--help`` never touches a database."""

    config_path: str | None

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    @cached_property
    def db(self) -> Database:
        return Database(self.config.database)

    @cached_property
    def hasher(self) -> Hasher:
        return Hasher(self.config.hashing, password_scheme=self.config.legacy.password_scheme)

    @cached_property
    def accounts(self) -> AccountStore:
        return make_account_store(self.config, self.db)


class _Group(click.Group):
    """Turns eximauthd's errors into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _INPUT_ERRORS as exc:
            _fail(str(exc), EXIT_USAGE)
        except (StorageError, HashingError) as exc:
            _fail(str(exc), EXIT_DB)
        except EximauthdError as exc:
            _fail(str(exc), EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"eximauthd: error: {message}", err=True)
    sys.exit(code)


pass_state = click.make_pass_decorator(_State)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="EXIMAUTHD_CONFIG", metavar="FILE",
              type=click.Path(dir_okay=False), help="TOML configuration (default: built-in).")
@click.option("-v", "--verbose", is_flag=True, help="Log informational events to stderr.")
@click.version_option(package_name="eximauthd")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """SMTP AUTH and relay decisions for Exim, fail-closed."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="eximauthd: %(levelname)s %(name)s: %(message)s")
    ctx.obj = _State(config_path)


def _read_password(from_stdin: bool, *, confirm: bool, prompt: str = "Password",
                   allow_empty: bool = False) -> str:
    """One password: a line of stdin (without its newline) or a hidden prompt on a terminal."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
    elif sys.stdin.isatty():
        password = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm,
                                default="", show_default=False)
    else:
        raise ConfigError("standard input is not a terminal: pass --password-stdin")
    if not password and not allow_empty:
        # The empty password is the hole this project exists to close.
        raise ConfigError("empty password refused")
    return password


# --- db ----------------------------------------------------------------------------------------

@cli.group()
def db() -> None:
    """Manage eximauthd's own database schema."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: _State) -> None:
    """Create or upgrade eximauthd's tables to the current revision."""
    before, after = upgrade.upgrade(state.db)
    if before == after:
        click.echo(f"schema already at revision {after}")
    else:
        click.echo(f"schema upgraded from {before or 'empty'} to revision {after}")


# --- user --------------------------------------------------------------------------------------

@cli.group()
def user() -> None:
    """Add, change and list accounts."""


_stdin_option = click.option("--password-stdin", is_flag=True,
                             help="Read the password as one line from standard input.")


@user.command("add")
@click.argument("address")
@_stdin_option
@pass_state
def user_add(state: _State, address: str, password_stdin: bool) -> None:
    """Create an account with an argon2id password."""
    parsed = parse_address(address)
    password = _read_password(password_stdin, confirm=True)
    state.accounts.add(parsed, state.hasher.hash(password))
    click.echo(f"added {parsed}")


@user.command("passwd")
@click.argument("address")
@_stdin_option
@pass_state
def user_passwd(state: _State, address: str, password_stdin: bool) -> None:
    """Set a new password for an account."""
    parsed = parse_address(address)
    password = _read_password(password_stdin, confirm=True, prompt="New password")
    state.accounts.set_password(parsed, state.hasher.hash(password))
    _tell_service(state, str(parsed))
    click.echo(f"password changed for {parsed}")


@user.command("disable")
@click.argument("address")
@pass_state
def user_disable(state: _State, address: str) -> None:
    """Refuse logins for an account (its password is kept)."""
    parsed = parse_address(address)
    state.accounts.set_enabled(parsed, False)
    _tell_service(state, str(parsed))
    click.echo(f"disabled {parsed}")


@user.command("enable")
@click.argument("address")
@pass_state
def user_enable(state: _State, address: str) -> None:
    """Allow logins for a disabled account again."""
    parsed = parse_address(address)
    state.accounts.set_enabled(parsed, True)
    click.echo(f"enabled {parsed}")


@user.command("delete")
@click.argument("address")
@pass_state
def user_delete(state: _State, address: str) -> None:
    """Delete an account."""
    parsed = parse_address(address)
    state.accounts.delete(parsed)
    _tell_service(state, str(parsed))
    click.echo(f"deleted {parsed}")


def _tell_service(state: _State, address: str) -> None:
    """Have the local service forget its cached logins of *address* (``FORGET``).

    Best effort: without a running service there is nothing cached here; services on other
    hosts drop the entries at their next revalidation (``cache.revalidate_seconds``).
    """
    line = f"FORGET {base64.b64encode(address.encode()).decode()}\n".encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(state.config.socket.path)
            sock.sendall(line)
            sock.recv(64)
    except OSError:
        logging.getLogger("eximauthd.cli").info("no service at %s to notify",
                                                state.config.socket.path)


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@pass_state
def user_list(state: _State, as_json: bool) -> None:
    """List accounts with their state and password scheme (never the hash)."""
    rows = [
        {"address": r.address, "enabled": r.enabled,
         "scheme": _scheme_name(r.password, state.hasher.bare)}
        for r in state.accounts.list()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _print_table(["ADDRESS", "ENABLED", "SCHEME"],
                 [[r["address"], "yes" if r["enabled"] else "no", r["scheme"]] for r in rows])


def _scheme_name(stored: str | None, bare: Scheme | None) -> str:
    if not stored:
        return "none"
    scheme, _, label = identify_scheme(stored, bare)
    if scheme is Scheme.UNKNOWN and hash_shape(stored) == label:
        return f"unknown ({label}?)"  # a bare hash of a kind password_scheme does not name
    return scheme.value


def _print_table(header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


# --- grant -------------------------------------------------------------------------------------

@cli.group()
def grant() -> None:
    """Send-as grants: let an account use another sender address or a whole domain."""


def _grant(user_id: str, sender: str) -> Grant:
    owner = parse_address(user_id)
    if sender.startswith("@"):
        domain = parse_address("postmaster" + sender).domain
        return Grant(str(owner), "@" + domain)
    return Grant(str(owner), str(parse_address(sender)))


@grant.command("add")
@click.argument("user_id", metavar="ID")
@click.argument("sender", metavar="SENDER-OR-@DOMAIN")
@pass_state
def grant_add(state: _State, user_id: str, sender: str) -> None:
    """Allow ID to send as SENDER (an address) or as any address @DOMAIN."""
    g = _grant(user_id, sender)
    added = GrantStore(state.db).add(g)
    click.echo(f"{'granted' if added else 'already granted'}: {g.user} may send as {g.sender}")


@grant.command("remove")
@click.argument("user_id", metavar="ID")
@click.argument("sender", metavar="SENDER-OR-@DOMAIN")
@pass_state
def grant_remove(state: _State, user_id: str, sender: str) -> None:
    """Withdraw a send-as grant."""
    g = _grant(user_id, sender)
    if not GrantStore(state.db).remove(g):
        raise UserNotFoundError(f"no such grant: {g.user} -> {g.sender}")
    click.echo(f"removed: {g.user} may no longer send as {g.sender}")


@grant.command("list")
@click.argument("user_id", metavar="[ID]", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@pass_state
def grant_list(state: _State, user_id: str | None, as_json: bool) -> None:
    """List send-as grants, of one account or of all."""
    owner = str(parse_address(user_id)) if user_id else None
    grants = GrantStore(state.db).list(owner)
    if as_json:
        click.echo(json.dumps([{"id": g.user, "sender": g.sender} for g in grants], indent=2))
        return
    _print_table(["ID", "SENDER"], [[g.user, g.sender] for g in grants])


# --- throttle, limits ----------------------------------------------------------------------------

@cli.group()
def throttle() -> None:
    """Brute-force counters (failed AUTHs per network and user) and outbound rate counters."""


@throttle.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
@pass_state
def throttle_list(state: _State, as_json: bool) -> None:
    """Show failed password checks in their window and outbound counts per user."""
    t = state.config.throttle
    now = utcnow()
    failures = AttemptStore(state.db).list(now - dt.timedelta(seconds=t.window_seconds))
    limit = {"ip": t.max_failures_per_ip, "user": t.max_failures_per_user}
    auth = [{"scope": f.scope, "subject": f.subject, "failures": f.failures,
             "limit": limit[f.scope], "locked": f.failures >= limit[f.scope],
             "window_ends": (f.window_start + dt.timedelta(seconds=t.window_seconds))
             .isoformat(sep=" ") + "Z"} for f in failures]
    rates = _rate_rows(state, int(time.time()))
    if as_json:
        click.echo(json.dumps({"auth_failures": auth, "rates": rates}, indent=2))
        return
    click.echo(f"failed AUTHs in the last {t.window_seconds}s (shared by every instance):")
    _print_table(["SCOPE", "SUBJECT", "FAILURES", "LIMIT", "STATE", "WINDOW ENDS (UTC)"],
                 [[r["scope"], r["subject"], r["failures"], r["limit"],
                   "locked" if r["locked"] else "counting", r["window_ends"]] for r in auth])
    click.echo("\noutbound counts per user, sliding windows:")
    _print_table(["USER", "KIND", "WINDOW", "COUNT", "LIMIT"],
                 [[r["user"], r["kind"], r["window"], r["count"], r["limit"]] for r in rates])


def _rate_rows(state: _State, now: int) -> list[dict[str, Any]]:
    live = RateStore(state.db).live(now)
    overrides = LimitStore(state.db).all()
    defaults = {kind: parse_limits(getattr(state.config.ratelimit, kind)) for kind in KINDS}
    rows = []
    for address, kind, window in sorted({(a, k, w) for a, k, w, _ in live}):
        bucket = now // window
        count = estimate(live.get((address, kind, window, bucket - 1), 0),
                         live.get((address, kind, window, bucket), 0), now, window)
        limits = overrides.get(address, {}).get(kind, defaults[kind])
        maximum = next((lim.maximum for lim in limits if lim.window_seconds == window), None)
        rows.append({"user": address, "kind": kind, "window": format_window(window),
                     "count": round(count), "limit": maximum if maximum is not None else "-"})
    return rows


@throttle.command("reset")
@click.option("--ip", "client_ip", metavar="IP",
              help=f"Forget failures of this client's network ({NO_ADDRESS}: requests "
                   "without one).")
@click.option("--user", "address", metavar="ADDRESS",
              help="Forget failures against this user and its outbound counts.")
@click.option("--all", "everything", is_flag=True, help="Forget every counter.")
@pass_state
def throttle_reset(state: _State, client_ip: str | None, address: str | None,
                   everything: bool) -> None:
    """Unlock a network or a user now (running services see it within a second)."""
    if sum(map(bool, (client_ip, address, everything))) != 1:
        raise ConfigError("throttle reset: give exactly one of --ip, --user, --all")
    failures, rates = AttemptStore(state.db), RateStore(state.db)
    if everything:
        click.echo(f"forgot {failures.reset()} failed check(s), {rates.reset()} rate "
                   "counter(s)")
    elif client_ip:
        t = state.config.throttle
        network = (NO_ADDRESS if client_ip == NO_ADDRESS
                   else network_of(_client_ip_option(client_ip, "--ip"), t.ipv4_prefix,
                                   t.ipv6_prefix))
        if network is None:
            raise ConfigError(f"throttle reset: {client_ip[:64]!r} is not an IP address")
        click.echo(f"forgot {failures.reset('ip', network)} failed check(s) of {network}")
    elif address:
        user = str(parse_address(address))
        click.echo(f"forgot {failures.reset('user', user)} failed check(s) and "
                   f"{rates.reset(user)} rate counter(s) of {user}")


@user.command("limits")
@click.argument("address")
@click.option("--recipients", metavar="SPEC",
              help="COUNT/WINDOW[,COUNT/WINDOW...], 'none' (unlimited) or 'default'.")
@click.option("--messages", metavar="SPEC", help="As --recipients, for messages.")
@pass_state
def user_limits(state: _State, address: str, recipients: str | None,
                messages: str | None) -> None:
    """Show or set ADDRESS's outbound limits (they replace the configured ones of a kind)."""
    user = str(parse_address(address))
    store = LimitStore(state.db)
    for kind, spec in (("recipients", recipients), ("messages", messages)):
        if spec is None:
            continue
        text = spec.strip().lower()
        if text == "default":
            store.set(user, kind, None)
        elif text == "none":
            store.set(user, kind, ())
        else:
            try:
                store.set(user, kind, parse_limits(text.split(",")))
            except ConfigError as exc:
                raise ConfigError(f"--{kind}: {exc}") from None
    overrides = store.all().get(user, {})
    for kind in KINDS:
        if kind in overrides:
            shown = ", ".join(map(str, overrides[kind])) or "none (unlimited)"
            click.echo(f"{user} {kind}: {shown}")
        else:
            defaults = parse_limits(getattr(state.config.ratelimit, kind))
            click.echo(f"{user} {kind}: {', '.join(map(str, defaults)) or 'none'} (default)")


# --- hash, check -------------------------------------------------------------------------------

@cli.command("hash")
@_stdin_option
@click.option("--calibrate", "do_calibrate", is_flag=True,
              help="Measure argon2id here and suggest parameters instead of hashing.")
@click.option("--target-ms", type=click.IntRange(5, 5000), default=100, show_default=True,
              help="With --calibrate: the longest acceptable verification time.")
@pass_state
def hash_command(state: _State, password_stdin: bool, do_calibrate: bool, target_ms: int) -> None:
    """Print an argon2id hash of a password, with the configured parameters."""
    if do_calibrate:
        _calibrate(state.config, target_ms)
        return
    password = _read_password(password_stdin, confirm=True)
    click.echo(state.hasher.hash(password))


def _calibrate(config: Config, target_ms: int) -> None:
    fits = calibrate(target_ms / 1000, max_memory_cost=config.hashing.max_memory_cost,
                     parallelism=config.hashing.parallelism)
    if not fits:
        raise ConfigError(f"even m=19456 KiB, t=1 takes longer than {target_ms} ms on this host")
    _print_table(["MEMORY_KIB", "TIME_COST", "PARALLELISM", "VERIFY_MS"],
                 [[f.memory_cost, f.time_cost, f.parallelism, f"{f.seconds * 1000:.1f}"]
                  for f in fits])
    best = fits[-1]
    click.echo(f"\n# strongest fit for {target_ms} ms per verification; each concurrent AUTH "
               f"needs {best.memory_cost // 1024} MiB\n[hashing]\nmemory_cost = {best.memory_cost}"
               f"\ntime_cost = {best.time_cost}\nparallelism = {best.parallelism}")


@cli.command("check")
@click.argument("address")
@_stdin_option
@click.option("--client-ip", default="", help="Client address to record, as Exim would pass it.")
@pass_state
def check(state: _State, address: str, password_stdin: bool, client_ip: str) -> None:
    """Check a password as an SMTP AUTH would: prints yes/no and why; exit 0 yes, 1 no."""
    _client_ip_option(client_ip)
    # An empty password is passed on, so `check` shows the refusal Exim would get.
    password = _read_password(password_stdin, confirm=False, allow_empty=True)
    decision = Authenticator(state.accounts, state.hasher).verify(address, password, client_ip)
    click.echo(f"{decision.result.value} {decision.reason}")
    sys.exit(EXIT_OK if decision.allowed else EXIT_NO)


def _client_ip_option(value: str, option: str = "--client-ip") -> str:
    """*value* if the socket protocol would accept it as a client address; else ConfigError."""
    try:
        return parse_client_ip(value)
    except ProtocolError:
        raise ConfigError(f"{option}: {value[:64]!r} is not an IPv4 or IPv6 address "
                          "(no scope id)") from None


# --- am I relaying spam? -----------------------------------------------------------------------

DEFAULT_MAINLOG = "/var/log/exim4/mainlog"


@cli.command("audit-log")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%d %H:%M:%S"]), default=None,
              help="Ignore events before this time (Exim's local time).")
@click.option("--burst", type=click.IntRange(1), default=100, show_default=True,
              help="Remote deliveries per hour of one id or IP that count as a burst.")
def audit_log(files: tuple[str, ...], as_json: bool, since: Any, burst: int) -> None:
    """Read Exim mainlogs (.gz too; - for stdin) and say whether this server relays for others.

    Exit 0: clean; 1: findings.  Default file: /var/log/exim4/mainlog.
    """
    from ..exim.audit import Auditor  # noqa: PLC0415

    auditor = Auditor(burst_threshold=burst, since=since)
    for name in files or (DEFAULT_MAINLOG,):
        try:
            with _open_log(name) as stream:
                auditor.feed(stream)
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    report = auditor.report()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_audit(report)
    sys.exit(EXIT_OK if report.clean else EXIT_NO)


def _open_log(name: str) -> Any:
    import contextlib  # noqa: PLC0415
    import gzip  # noqa: PLC0415
    import io  # noqa: PLC0415

    if name == "-":
        return contextlib.nullcontext(io.TextIOWrapper(sys.stdin.buffer, "utf-8", "replace"))
    if name.endswith(".gz"):
        return gzip.open(name, "rt", encoding="utf-8", errors="replace")
    return open(name, encoding="utf-8", errors="replace")


def _print_audit(report: Any) -> None:
    click.echo(f"verdict: {report.verdict()}")
    click.echo(f"lines {report.lines}, messages received {report.arrivals} "
               f"(authenticated {report.authenticated}), remote deliveries "
               f"{report.remote_deliveries}, relay attempts refused {report.rejected_relays}")
    if report.findings:
        click.echo("")
        _print_table(["SEVERITY", "FINDING", "SUBJECT", "COUNT"],
                     [[f.severity, f.kind, f.subject, f.count] for f in report.findings])
        click.echo("\nfirst example of each:")
        for f in report.findings:
            click.echo(f"  [{f.kind}] {f.example}")
    if report.remote_by_id:
        click.echo("\nremote deliveries by authenticated id:")
        _print_table(["ID", "DELIVERIES"], [[i or "(empty)", n]
                                            for i, n in report.remote_by_id.most_common(10)])
    if report.remote_by_ip:
        click.echo("\nremote deliveries by client IP:")
        _print_table(["IP", "DELIVERIES"], [[i, n] for i, n in report.remote_by_ip.most_common(10)])


@cli.command("lint-exim-config")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of text.")
def lint_exim_config(files: tuple[str, ...], as_json: bool) -> None:
    """Check an Exim configuration for the mistakes that make an open relay.

    Without FILE: the configuration Exim itself uses (exim4 -bP configure_file).
    Exit 0: nothing found; 1: findings.
    """
    from pathlib import Path  # noqa: PLC0415

    from ..exim.lint import lint, read_config  # noqa: PLC0415

    paths = [Path(f) for f in files] or [Path(_running_exim_config())]
    try:
        findings = lint(read_config(paths))
    except OSError as exc:
        raise ConfigError(str(exc)) from None
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for f in findings:
            click.echo(f"{f.where}: {f.severity}: {f.rule}: {f.message}\n    fix: {f.fix}")
        click.echo(f"{len(findings)} finding(s) in {', '.join(str(p) for p in paths)}")
    sys.exit(EXIT_NO if findings else EXIT_OK)


def _running_exim_config() -> str:
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    exim = shutil.which("exim4") or shutil.which("exim")
    if exim is None:
        raise ConfigError("no FILE given and no exim4 on PATH to ask for its configuration")
    result = subprocess.run([exim, "-bP", "configure_file"],  # noqa: S603 -- fixed argv
                            capture_output=True, text=True, timeout=30, check=False)
    path = result.stdout.strip()
    if result.returncode != 0 or not path:
        raise ConfigError(f"{exim} -bP configure_file failed: {result.stderr.strip()[:200]}")
    return path


# --- serve -------------------------------------------------------------------------------------

@cli.command("serve")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log lines as key=value text or JSON (default: service.log_format).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Append logs to FILE instead of stderr; reopened on SIGHUP.")
@pass_state
def serve(state: _State, log_format: str | None, log_file: str | None) -> None:
    """Answer Exim on the Unix socket and serve the HTTP API until SIGTERM."""
    from ..service.decider import Decider  # noqa: PLC0415 -- keep other commands' start-up light
    from ..service.logs import configure_logging  # noqa: PLC0415
    from ..service.server import Service  # noqa: PLC0415

    config = state.config
    fmt = log_format or config.service.log_format
    configure_logging(fmt, log_file)
    log = logging.getLogger("eximauthd.serve")
    if config.source != "built-in defaults":
        # The file may hold the database password or http.token: warn, do not refuse (an
        # upgrade must not stop mail over a mode the admin can fix at leisure).
        warn_if_readable_by_others(config.source, "the configuration (database URL, token)")
    if state.db.dialect == "sqlite":
        # The embedded default must work from an empty directory; a shared MySQL schema is
        # upgraded deliberately, with `eximauthd db upgrade`, by someone allowed to run DDL.
        upgrade.upgrade(state.db)
    service = Service(config, Decider(config, db=state.db))

    def ready() -> None:
        http = f"http://{config.http.listen}" if config.http.enabled else "disabled"
        log.info("serving socket=%s http=%s database=%s workers=%d config=%s",
                 os.path.abspath(config.socket.path), http,
                 mask_url(config.database.url), service.workers, config.source)

    def reopen_logs() -> None:
        configure_logging(fmt, log_file)

    asyncio.run(service.run(ready, on_hangup=reopen_logs))
    log.info("stopped")


@cli.command("migrate-passwords")
@click.option("--dry-run", is_flag=True, help="Count and check everything; write nothing.")
@click.option("--jobs", type=click.IntRange(1, 1024), default=None, metavar="N",
              help="Hashing processes (default: one per CPU).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=200, show_default=True,
              metavar="N", help="Rows per read and per write transaction.")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N",
              help="Stop after N plaintext passwords.")
@click.option("--alter-column", is_flag=True,
              help="Widen a password column too narrow for argon2id first (MySQL/MariaDB).")
@pass_state
def migrate_passwords(state: _State, dry_run: bool, jobs: int | None, batch_size: int,
                      limit: int | None, alter_column: bool) -> None:
    """Hash every plaintext password with argon2id, in place; safe to stop and rerun."""
    from ..migrate import progress, run  # noqa: PLC0415 -- keep other commands' start-up light

    # Without --jobs, MigrationOptions' own default: one process per CPU.
    options = run.MigrationOptions(dry_run=dry_run, batch_size=batch_size, limit=limit,
                                   alter_column=alter_column,
                                   **({"jobs": jobs} if jobs is not None else {}))
    report = run.migrate_passwords(state.config, state.db, options,
                                   progress=progress.Progress(sys.stderr))
    for line in report.summary():
        click.echo(line)
    for warning in report.warnings():
        click.echo(f"eximauthd: WARNING: {warning}", err=True)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="eximauthd")

