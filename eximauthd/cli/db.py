"""``eximauthd db``: eximauthd's own database schema, and the index a legacy table needs."""

from __future__ import annotations

import click

from ..db import legacyindex, upgrade
from ..errors import ConfigError, StorageError
from .app import State, cli, pass_state


@cli.group()
def db() -> None:
    """Manage eximauthd's own database schema."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Create or upgrade eximauthd's tables to the current revision."""
    before, after = upgrade.upgrade(state.db)
    if before == after:
        click.echo(f"schema already at revision {after}")
    else:
        click.echo(f"schema upgraded from {before or 'empty'} to revision {after}")


@db.command("index-legacy")
@click.option("--apply", is_flag=True,
              help="Create the index (online on MySQL/MariaDB) instead of printing it.")
@pass_state
def db_index_legacy(state: State, apply: bool) -> None:
    """Index the [legacy] table's login columns so each AUTH reads one row, not the table."""
    legacy = state.config.legacy
    if not legacy.configured:
        raise ConfigError("db index-legacy: no [legacy] table is configured (eximauthd's own "
                          "tables are indexed by `eximauthd db upgrade`)")
    check = legacyindex.check_legacy_index(state.db, legacy)
    if check.indexed:
        click.echo(f"{check.describe()}: nothing to do")
        return
    if not apply:
        click.echo(f"{check.summary()}; to create one, run this (or again with --apply):\n"
                   f"{check.statement};")
        return
    legacyindex.create_legacy_index(state.db, check)
    after = legacyindex.check_legacy_index(state.db, legacy)
    if not after.indexed:
        raise StorageError(f"ran {check.statement} but the lookup still uses no index "
                           "(report this with the table's SHOW CREATE TABLE)")
    click.echo(f"created: {check.statement}\n{after.describe()}")
