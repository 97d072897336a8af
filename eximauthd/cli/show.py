"""``eximauthd user show``: one account, everything eximauthd holds about it, never its hash."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import click

from ..core.addresses import parse_address
from ..core.limits import KINDS
from ..db.counters import AttemptStore, LimitStore, utcnow
from ..db.grants import GrantStore
from .app import State, pass_state
from .limits import _limits_in_force, _rate_rows
from .users import _scheme_name, require_account
from .users import user as user_group

__all__ = ["user_show"]


@user_group.command("show")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@pass_state
def user_show(state: State, address: str, as_json: bool) -> None:
    """Show ADDRESS's account: scheme of its password (never the hash), state, limits, grants
    and throttle counters. Exit 2 when it has no account."""
    parsed = parse_address(address)
    record = require_account(state, parsed)
    user = str(parsed)
    shown = _account(state, user, record.enabled,
                     _scheme_name(record.password, state.hasher.bare))
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    lines = [("address", shown["address"]), ("enabled", "yes" if shown["enabled"] else "no"),
             ("scheme", shown["scheme"])]
    for kind, limit in shown["limits"].items():
        text = ", ".join(limit["limits"]) or "none (unlimited)"
        lines.append((f"{kind} limit", f"{text}{' (default)' if limit['default'] else ''}"))
    lines.append(("grants", ", ".join(shown["grants"]) or "none (its own address only)"))
    failures = shown["auth_failures"]
    lines.append(("failed AUTHs", "none in the window" if failures is None else
                  f"{failures['failures']} of {failures['limit']}, "
                  f"{'locked' if failures['locked'] else 'counting'} until "
                  f"{failures['window_ends']} UTC"))
    lines += [("sent", f"{r['count']} {r['kind']} in {r['window']} (limit {r['limit']})")
              for r in shown["rates"]]
    for label, value in lines:
        click.echo(f"{label + ':':<18}{value}")


def _account(state: State, user: str, enabled: bool, scheme: str) -> dict[str, Any]:
    in_force = _limits_in_force(state, LimitStore(state.db))
    overrides = in_force.overrides.get(user, {})
    t = state.config.throttle
    since = utcnow() - dt.timedelta(seconds=t.window_seconds)
    row = next((f for f in AttemptStore(state.db).list(since)
                if f.scope == "user" and f.subject == user), None)
    failures = None if row is None else {
        "failures": row.failures, "limit": t.max_failures_per_user,
        "locked": row.failures >= t.max_failures_per_user,
        "window_ends": (row.window_start + dt.timedelta(seconds=t.window_seconds))
        .isoformat(sep=" ") + "Z"}
    return {
        "address": user, "enabled": enabled, "scheme": scheme,
        "limits": {kind: {"limits": [str(lim) for lim in in_force.limits(user, kind)],
                          "default": kind not in overrides} for kind in KINDS},
        "grants": [g.sender for g in GrantStore(state.db).list(user)],
        "auth_failures": failures,
        "rates": [{k: v for k, v in r.items() if k != "user"}
                  for r in _rate_rows(state, int(time.time())) if r["user"] == user],
    }
