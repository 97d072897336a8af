"""``eximauthd audit-log`` and ``lint-exim-config``: is this server relaying for others?"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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
        print_table(["SEVERITY", "FINDING", "SUBJECT", "COUNT"],
                    [[f.severity, f.kind, f.subject, f.count] for f in report.findings])
        click.echo("\nfirst example of each:")
        for f in report.findings:
            click.echo(f"  [{f.kind}] {f.example}")
    if report.remote_by_id:
        click.echo("\nremote deliveries by authenticated id:")
        print_table(["ID", "DELIVERIES"], [[i or "(empty)", n]
                                           for i, n in report.remote_by_id.most_common(10)])
    if report.remote_by_ip:
        click.echo("\nremote deliveries by client IP:")
        print_table(["IP", "DELIVERIES"], [[i, n] for i, n in report.remote_by_ip.most_common(10)])


@cli.command("lint-exim-config")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of text.")
def lint_exim_config(files: tuple[str, ...], as_json: bool) -> None:
    """Check an Exim configuration for the mistakes that make an open relay.

    Without FILE: the configuration Exim itself uses (exim4 -bP configure_file).
    Exit 0: nothing found; 1: findings.
    """
    from ..exim.configfile import read_config  # noqa: PLC0415
    from ..exim.lint import lint  # noqa: PLC0415

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
    exim = shutil.which("exim4") or shutil.which("exim")
    if exim is None:
        raise ConfigError("no FILE given and no exim4 on PATH to ask for its configuration")
    result = subprocess.run([exim, "-bP", "configure_file"],  # noqa: S603 -- fixed argv
                            capture_output=True, text=True, timeout=30, check=False)
    path = result.stdout.strip()
    if result.returncode != 0 or not path:
        raise ConfigError(f"{exim} -bP configure_file failed: {result.stderr.strip()[:200]}")
    return path
