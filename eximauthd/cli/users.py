"""``eximauthd user``: add, change, disable and list accounts (their limits: :mod:`.limits`)."""

from __future__ import annotations

import base64
import json
import logging
import socket
import time

import click

from ..core.addresses import Address, parse_address
from ..core.hashing import Scheme, hash_shape, identify_scheme
from ..db.accounts import UserRecord
from ..errors import UserNotFoundError
from .app import State, cli, pass_state, print_table, read_password, stdin_option


def require_account(state: State, address: Address) -> UserRecord:
    """The account of *address*; for a command about it that would otherwise act on a typo.

    :raises UserNotFoundError: no account has that address.
    """
    found = state.accounts.find(address)
    if not found:
        raise UserNotFoundError(f"no account {address} (check the spelling: "
                                "`eximauthd user list`)")
    return found[0]


@cli.group()
def user() -> None:
    """Add, change and list accounts."""


@user.command("add")
@click.argument("address")
@stdin_option
@pass_state
def user_add(state: State, address: str, password_stdin: bool) -> None:
    """Create an account with an argon2id password."""
    parsed = parse_address(address)
    password = read_password(password_stdin, confirm=True)
    state.accounts.add(parsed, state.hasher.hash(password))
    click.echo(f"added {parsed}")


@user.command("passwd")
@click.argument("address")
@stdin_option
@pass_state
def user_passwd(state: State, address: str, password_stdin: bool) -> None:
    """Set a new password for an account."""
    parsed = parse_address(address)
    password = read_password(password_stdin, confirm=True, prompt="New password")
    state.accounts.set_password(parsed, state.hasher.hash(password))
    tell_service(state, str(parsed))
    click.echo(f"password changed for {parsed}")


@user.command("disable")
@click.argument("address")
@pass_state
def user_disable(state: State, address: str) -> None:
    """Refuse logins for an account (its password is kept)."""
    parsed = parse_address(address)
    state.accounts.set_enabled(parsed, False)
    tell_service(state, str(parsed))
    click.echo(f"disabled {parsed}")


@user.command("enable")
@click.argument("address")
@pass_state
def user_enable(state: State, address: str) -> None:
    """Allow logins for a disabled account again."""
    parsed = parse_address(address)
    state.accounts.set_enabled(parsed, True)
    click.echo(f"enabled {parsed}")


@user.command("delete")
@click.argument("address")
@pass_state
def user_delete(state: State, address: str) -> None:
    """Delete an account."""
    parsed = parse_address(address)
    state.accounts.delete(parsed)
    tell_service(state, str(parsed))
    click.echo(f"deleted {parsed}")


def tell_service(state: State, address: str) -> bool:
    """Have the local service forget its cached logins and grants of *address* (``FORGET``);
    True when it confirmed (answered ``yes``).

    Best effort: without a running service there is nothing cached here; services on other
    hosts drop the logins at their next revalidation (``cache.revalidate_seconds``) and the
    grants when they expire (``policy.grant_cache_seconds``).  A listener at the socket that
    does not answer ``yes`` in time (a wedged service, or something else at that path) is
    warned about: the change is made, but a service may go on using what it remembered.
    """
    path = state.config.socket.path
    line = f"FORGET {base64.b64encode(address.encode()).decode()}\n".encode()
    deadline = time.monotonic() + _FORGET_TIMEOUT
    reply = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_FORGET_TIMEOUT)
            sock.connect(path)
            sock.sendall(line)
            # One overall deadline, not one per read: a listener that trickles a byte at a
            # time must not hold the command for long.
            while b"\n" not in reply and len(reply) < 64:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(64 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        logging.getLogger("eximauthd.cli").info("no service at %s to notify", path)
        return False
    except OSError as exc:
        reason = "no answer in time" if isinstance(exc, TimeoutError) else (
            exc.strerror or type(exc).__name__)
    else:
        if reply == b"yes\n":
            return True
        # The reply itself is not shown: whatever is at the socket chose it.
        reason = "no answer" if not reply else "not the answer of an eximauthd service"
    logging.getLogger("eximauthd.cli").warning(
        "the service at %s did not confirm FORGET of %s (%s): it may go on using its cached "
        "logins of it for up to %d s and its remembered grants for up to %d s", path, address,
        reason, state.config.cache.revalidate_seconds, state.config.policy.grant_cache_seconds)
    return False


# Connect, send and the whole answer: a wedged listener costs the command at most this long.
_FORGET_TIMEOUT = 2.0


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@click.option("--domain", metavar="DOMAIN", help="Only the accounts @DOMAIN.")
@pass_state
def user_list(state: State, as_json: bool, domain: str | None) -> None:
    """List accounts with their state and password scheme (never the hash)."""
    # Canonical as addresses are (lower-case, IDNA), so `--domain Example.TEST` finds them.
    wanted = parse_address(f"postmaster@{domain}").domain if domain is not None else None
    rows = [
        {"address": r.address, "enabled": r.enabled,
         "scheme": _scheme_name(r.password, state.hasher.bare)}
        for r in state.accounts.list()
        if wanted is None or r.address.rpartition("@")[2] == wanted
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_table(["ADDRESS", "ENABLED", "SCHEME"],
                [[r["address"], "yes" if r["enabled"] else "no", r["scheme"]] for r in rows])


def _scheme_name(stored: str | None, bare: Scheme | None) -> str:
    if not stored:
        return "none"
    scheme, _, label = identify_scheme(stored, bare)
    if scheme is Scheme.UNKNOWN and hash_shape(stored) == label:
        return f"unknown ({label}?)"  # a bare hash of a kind password_scheme does not name
    return scheme.value
