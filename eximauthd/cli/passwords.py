"""``eximauthd hash``, ``check`` and ``migrate-passwords``: passwords one at a time or all."""

from __future__ import annotations

import sys

import click

from ..auth.authn import Authenticator
from ..core.hashing import calibrate
from ..db import legacyindex
from ..errors import ConfigError, EximauthdError
from ..settings import Config
from .app import (
    EXIT_NO,
    EXIT_OK,
    State,
    cli,
    client_ip_option,
    pass_state,
    print_table,
    read_password,
    stdin_option,
)


@cli.command("hash")
@stdin_option
@click.option("--calibrate", "do_calibrate", is_flag=True,
              help="Measure argon2id here and suggest parameters instead of hashing.")
@click.option("--target-ms", type=click.IntRange(5, 5000), default=100, show_default=True,
              help="With --calibrate: the longest acceptable verification time.")
@pass_state
def hash_command(state: State, password_stdin: bool, do_calibrate: bool, target_ms: int) -> None:
    """Print an argon2id hash of a password, with the configured parameters."""
    if do_calibrate:
        _calibrate(state.config, target_ms)
        return
    password = read_password(password_stdin, confirm=True)
    click.echo(state.hasher.hash(password))


def _calibrate(config: Config, target_ms: int) -> None:
    fits = calibrate(target_ms / 1000, max_memory_cost=config.hashing.max_memory_cost,
                     parallelism=config.hashing.parallelism)
    if not fits:
        raise ConfigError(f"even m=19456 KiB, t=1 takes longer than {target_ms} ms on this host")
    print_table(["MEMORY_KIB", "TIME_COST", "PARALLELISM", "VERIFY_MS"],
                [[f.memory_cost, f.time_cost, f.parallelism, f"{f.seconds * 1000:.1f}"]
                 for f in fits])
    best = fits[-1]
    click.echo(f"\n# strongest fit for {target_ms} ms per verification; each concurrent AUTH "
               f"needs {best.memory_cost // 1024} MiB\n[hashing]\nmemory_cost = {best.memory_cost}"
               f"\ntime_cost = {best.time_cost}\nparallelism = {best.parallelism}")


@cli.command("check")
@click.argument("address")
@stdin_option
@click.option("--client-ip", default="", help="Client address to record, as Exim would pass it.")
@pass_state
def check(state: State, address: str, password_stdin: bool, client_ip: str) -> None:
    """Check a password as an SMTP AUTH would: prints yes/no and why; exit 0 yes, 1 no."""
    client_ip_option(client_ip)
    # An empty password is passed on, so `check` shows the refusal Exim would get.
    password = read_password(password_stdin, confirm=False, checking=True)
    decision = Authenticator(state.accounts, state.hasher).verify(address, password, client_ip)
    click.echo(f"{decision.result.value} {decision.text}")
    sys.exit(EXIT_OK if decision.allowed else EXIT_NO)


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
def migrate_passwords(state: State, dry_run: bool, jobs: int | None, batch_size: int,
                      limit: int | None, alter_column: bool) -> None:
    """Hash every plaintext password with argon2id, in place; safe to stop and rerun."""
    from ..migrate import progress, run  # noqa: PLC0415 -- keep other commands' start-up light

    # Without --jobs, MigrationOptions' own default: one process per CPU.
    options = run.MigrationOptions(dry_run=dry_run, batch_size=batch_size, limit=limit,
                                   alter_column=alter_column,
                                   **({"jobs": jobs} if jobs is not None else {}))
    try:
        unindexed = legacyindex.legacy_index_warning(state.db, state.config.legacy)
    except EximauthdError:
        unindexed = None  # a missing table or column: the run below names it, in one line
    if unindexed is not None:
        # Before anything is written: the rewrite, and every AUTH after it, read by that lookup.
        click.echo(f"eximauthd: WARNING: {unindexed}", err=True)
    report = run.migrate_passwords(state.config, state.db, options,
                                   progress=progress.Progress(sys.stderr))
    for line in report.summary():
        click.echo(line)
    for warning in report.warnings():
        click.echo(f"eximauthd: WARNING: {warning}", err=True)
