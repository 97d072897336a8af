"""``eximauthd grant``: send-as grants (an account may use another sender or a domain)."""

from __future__ import annotations

import json

import click

from ..core.addresses import parse_address
from ..db.grants import Grant, GrantStore
from ..errors import UserExistsError, UserNotFoundError
from .app import State, cli, pass_state, print_table
from .users import require_account, tell_service


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
def grant_add(state: State, user_id: str, sender: str) -> None:
    """Allow account ID to send as SENDER (an address) or as any address @DOMAIN.

    Exit 2 when ID has no account or already holds the grant.
    """
    g = _grant(user_id, sender)
    # A grant to a typo would sit unused while the real account still cannot send.
    require_account(state, parse_address(g.user))
    if not GrantStore(state.db).add(g):
        raise UserExistsError(f"{g.user} may already send as {g.sender} (nothing changed; "
                              f"`eximauthd grant list {g.user}` shows the grants)")
    click.echo(f"granted: {g.user} may send as {g.sender}")


@grant.command("remove")
@click.argument("user_id", metavar="ID")
@click.argument("sender", metavar="SENDER-OR-@DOMAIN")
@pass_state
def grant_remove(state: State, user_id: str, sender: str) -> None:
    """Withdraw a send-as grant."""
    g = _grant(user_id, sender)
    if not GrantStore(state.db).remove(g):
        raise UserNotFoundError(f"no such grant: {g.user} -> {g.sender}")
    tell_service(state, g.user)  # its remembered grants end now, not at their expiry
    click.echo(f"removed: {g.user} may no longer send as {g.sender}")


@grant.command("list")
@click.argument("user_id", metavar="[ID]", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@pass_state
def grant_list(state: State, user_id: str | None, as_json: bool) -> None:
    """List send-as grants, of one account or of all."""
    owner = str(parse_address(user_id)) if user_id else None
    grants = GrantStore(state.db).list(owner)
    if as_json:
        click.echo(json.dumps([{"id": g.user, "sender": g.sender} for g in grants], indent=2))
        return
    print_table(["ID", "SENDER"], [[g.user, g.sender] for g in grants])
