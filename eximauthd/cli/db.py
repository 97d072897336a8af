"""``eximauthd db``: eximauthd's own database schema."""

from __future__ import annotations

import click

from ..db import upgrade
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
