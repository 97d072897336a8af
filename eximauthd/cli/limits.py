"""``eximauthd throttle`` and ``eximauthd user limits``: the abuse counters and the limits."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import click

from ..core.addresses import parse_address
from ..core.clients import NO_ADDRESS, read_client
from ..core.limits import KINDS, format_window, parse_limits
from ..core.ratelimit import RateLimiter, estimate
from ..db.counters import AttemptStore, LimitStore, RateStore, utcnow
from ..errors import ConfigError
from .app import State, cli, client_ip_option, pass_state, print_table
from .users import require_account
from .users import user as user_group


@cli.group()
def throttle() -> None:
    """Brute-force counters (failed AUTHs per network and user) and outbound rate counters."""


@throttle.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
@pass_state
def throttle_list(state: State, as_json: bool) -> None:
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
    print_table(["SCOPE", "SUBJECT", "FAILURES", "LIMIT", "STATE", "WINDOW ENDS (UTC)"],
                [[r["scope"], r["subject"], r["failures"], r["limit"],
                  "locked" if r["locked"] else "counting", r["window_ends"]] for r in auth])
    click.echo("\noutbound counts per user, sliding windows:")
    print_table(["USER", "KIND", "WINDOW", "COUNT", "LIMIT"],
                [[r["user"], r["kind"], r["window"], r["count"], r["limit"]] for r in rates])


def _limits_in_force(state: State, store: LimitStore) -> RateLimiter:
    """The limits as the service applies them (:meth:`.RateLimiter.limits`): the configured
    ones, replaced per user and kind by the overrides in *store*."""
    limiter = RateLimiter(state.config.ratelimit)
    limiter.overrides = store.all()
    return limiter


def _rate_rows(state: State, now: int) -> list[dict[str, Any]]:
    live = RateStore(state.db).live(now)
    in_force = _limits_in_force(state, LimitStore(state.db))
    rows = []
    for address, kind, window in sorted({(a, k, w) for a, k, w, _ in live}):
        bucket = now // window
        count = estimate(live.get((address, kind, window, bucket - 1), 0),
                         live.get((address, kind, window, bucket), 0), now, window)
        limits = in_force.limits(address, kind)
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
def throttle_reset(state: State, client_ip: str | None, address: str | None,
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
                   else read_client(client_ip_option(client_ip, "--ip"), t.ipv4_prefix,
                                    t.ipv6_prefix).network)
        if network is None:
            raise ConfigError(f"throttle reset: {client_ip[:64]!r} is not an IP address")
        click.echo(f"forgot {failures.reset('ip', network)} failed check(s) of {network}")
    elif address:
        user = str(parse_address(address))
        click.echo(f"forgot {failures.reset('user', user)} failed check(s) and "
                   f"{rates.reset(user)} rate counter(s) of {user}")


@user_group.command("limits")
@click.argument("address")
@click.option("--recipients", metavar="SPEC",
              help="COUNT/WINDOW[,COUNT/WINDOW...], 'none' (unlimited) or 'default'.")
@click.option("--messages", metavar="SPEC", help="As --recipients, for messages.")
@pass_state
def user_limits(state: State, address: str, recipients: str | None,
                messages: str | None) -> None:
    """Show or set ADDRESS's outbound limits (they replace the configured ones of a kind)."""
    parsed = parse_address(address)
    require_account(state, parsed)
    user = str(parsed)
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
    in_force = _limits_in_force(state, store)
    overrides = in_force.overrides.get(user, {})
    for kind in KINDS:
        shown = ", ".join(map(str, in_force.limits(user, kind)))
        if kind in overrides:
            click.echo(f"{user} {kind}: {shown or 'none (unlimited)'}")
        else:
            click.echo(f"{user} {kind}: {shown or 'none'} (default)")
