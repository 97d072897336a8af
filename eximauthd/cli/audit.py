"""``eximauthd audit-log`` and ``lint-exim-config``: is this server relaying for others?"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO, cast

import click

from ..errors import ConfigError
from .app import EXIT_NO, EXIT_OK, cli, print_table

DEFAULT_MAINLOG = "/var/log/exim4/mainlog"


@cli.command("audit-log")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%d %H:%M:%S"]), default=None,
              help="Ignore events before this time (Exim's local time).")
@click.option("--burst", type=click.IntRange(1), default=100, show_default=True,
              help="Remote deliveries per hour of one id or IP that count as a burst.")
@click.option("--top", type=click.IntRange(1), default=None, metavar="N",
              help="Findings of the N most relaying logins only (default: all).")
def audit_log(files: tuple[str, ...], as_json: bool, since: Any, burst: int,
              top: int | None) -> None:
    """Read Exim mainlogs (.gz too; - for stdin) and say whether this server relays for others.

    Exit 0: clean; 1: findings; 2: a file unreadable, damaged or not an Exim mainlog.
    Default file: /var/log/exim4/mainlog.
    """
    from ..exim.audit import Auditor  # noqa: PLC0415

    auditor = Auditor(burst_threshold=burst, since=since)
    progress = _Progress(sys.stderr)
    for name in files or (DEFAULT_MAINLOG,):
        _audit_file(auditor, name, progress)
    report = auditor.report()
    if as_json:
        click.echo(json.dumps(report.as_dict(top), indent=2))
    else:
        _print_audit(report, top)
    sys.exit(EXIT_OK if report.clean else EXIT_NO)


# Exim writes lines of at most a few KiB; a longer one is cut here rather than held whole.
MAX_LINE = 64 * 1024
_PROGRESS_EVERY = 8192  # lines between looks at the clock


def _audit_file(auditor: Any, name: str, progress: _Progress) -> None:
    label = "<stdin>" if name == "-" else name
    recognised = 0
    try:
        with _open_log(name) as (stream, raw, size):
            for count, line in enumerate(_read_lines(stream), 1):
                recognised += auditor.feed_line(line)
                if count % _PROGRESS_EVERY == 0:
                    progress.update(label, count, _position(raw), size)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise ConfigError(f"{label}: cannot read: damaged or truncated gzip data") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror or exc}") from None
    finally:
        progress.clear()
    if not recognised:
        raise ConfigError(f"{label}: not an Exim mainlog (no line recognised)")


@contextlib.contextmanager
def _open_log(name: str) -> Iterator[tuple[BinaryIO, BinaryIO, int | None]]:
    """The stream of lines, the file under it (for the position) and that file's size."""
    if name == "-":
        yield sys.stdin.buffer, sys.stdin.buffer, None
        return
    with open(name, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        if name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield cast(BinaryIO, unzipped), raw, size
        else:
            yield raw, raw, size


def _read_lines(stream: BinaryIO) -> Iterator[str]:
    """Lines of at most :data:`MAX_LINE` bytes; the rest of a longer line is skipped unread."""
    while line := stream.readline(MAX_LINE):
        if len(line) == MAX_LINE and not line.endswith(b"\n"):
            while (rest := stream.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                pass
        yield line.decode("utf-8", "replace")


def _position(raw: BinaryIO) -> int | None:
    try:
        return raw.tell()
    except OSError:  # a pipe
        return None


class _Progress:
    """A status line for a person watching a terminal: only on a TTY, a few times a second.

    Never on a pipe or file, so that scripts and cron mail see only the report.
    """

    def __init__(self, stream: TextIO, *, interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        try:
            self.enabled = stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self.stream, self.interval, self.clock = stream, interval, clock
        self._last: float | None = None
        self._shown = False

    def update(self, name: str, lines: int, position: int | None, size: int | None) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self._last is None:
            self._last = now  # the first look only starts the clock: small files stay quiet
            return
        if now - self._last < self.interval:
            return
        self._last = now
        done = f" {100 * position // size}%" if position is not None and size else ""
        self.stream.write(f"\r{name}: {lines:,} lines{done}\x1b[K")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        self._last = None
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _print_audit(report: Any, top: int | None) -> None:
    click.echo(f"verdict: {report.verdict()}")
    click.echo(f"lines {report.lines}, messages received {report.arrivals} "
               f"(authenticated {report.authenticated}), remote deliveries "
               f"{report.remote_deliveries}, relay attempts refused {report.rejected_relays}")
    if report.findings:
        groups, left_out = report.by_login(top)
        rows = [(g.label, f) for g in groups for f in g.findings]
        click.echo("")
        print_table(["LOGIN", "SEVERITY", "FINDING", "SUBJECT", "COUNT"],
                    [[label, f.severity, f.kind, f.subject, f.count] for label, f in rows])
        if left_out:
            click.echo(f"({left_out} more login(s) with findings; --top {top} shows the most "
                       "relaying only)")
        click.echo("\nfirst example of each:")
        for _, f in rows:
            click.echo(f"  [{f.kind}] {f.example}")
    if report.remote_by_id:
        click.echo("\nremote deliveries by authenticated id:")
        print_table(["ID", "DELIVERIES"], [[i or "(empty)", n]
                                           for i, n in report.remote_by_id.most_common(top or 10)])
    if report.remote_by_ip:
        click.echo("\nremote deliveries by client IP:")
        print_table(["IP", "DELIVERIES"], [[i, n] for i, n in report.remote_by_ip.most_common(10)])


@cli.command("lint-exim-config")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of text.")
@click.option("-D", "defines", multiple=True, metavar="NAME[=VALUE]",
              help="Define a macro as exim -D does: it overrides the files' definitions.")
def lint_exim_config(files: tuple[str, ...], as_json: bool, defines: tuple[str, ...]) -> None:
    """Check an Exim configuration for the mistakes that make an open relay.

    Without FILE: the configuration Exim itself uses (exim4 -bP configure_file).
    Exit 0: nothing found; 1: findings; 2: a file unreadable or refused by Exim's syntax.
    """
    from ..exim.configfile import EximConfigError, read_config  # noqa: PLC0415
    from ..exim.lint import lint  # noqa: PLC0415

    macros = _macro_definitions(defines)
    paths = [Path(f) for f in files] or [Path(running_exim_config())]
    try:
        findings = lint(read_config(paths, macros))
    except (OSError, EximConfigError) as exc:
        raise ConfigError(str(exc)) from None
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for f in findings:
            click.echo(f"{f.where}: {f.severity}: {f.rule}: {f.message}\n    fix: {f.fix}")
        click.echo(f"{len(findings)} finding(s) in {', '.join(str(p) for p in paths)}")
    sys.exit(EXIT_NO if findings else EXIT_OK)


def _macro_definitions(defines: tuple[str, ...]) -> dict[str, str]:
    """``-DNAME``, ``-DNAME=value``, ``-D 'NAME = value'``, as exim reads them."""
    macros: dict[str, str] = {}
    for item in defines:
        name, _, value = item.partition("=")
        name = name.strip()
        if not re.fullmatch(r"[A-Z][A-Za-z0-9_]*", name):
            raise ConfigError(f"-D {item[:64]!r}: a macro name starts with an upper-case letter "
                              "and has only letters, digits and underscores")
        macros[name] = value.strip()
    return macros


def running_exim_config() -> str:
    exim = shutil.which("exim4") or shutil.which("exim")
    if exim is None:
        raise ConfigError("no FILE given and no exim4 on PATH to ask for its configuration")
    result = subprocess.run([exim, "-bP", "configure_file"],  # noqa: S603 -- fixed argv
                            capture_output=True, text=True, timeout=30, check=False)
    path = result.stdout.strip()
    if result.returncode != 0 or not path:
        raise ConfigError(f"{exim} -bP configure_file failed: {result.stderr.strip()[:200]}")
    return path
