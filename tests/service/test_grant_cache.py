"""``[policy] grant_cache_seconds``: remembered grants only ever allow, a refusal is read
afresh, FORGET ends them, and off (the default) every granted RELAY reads the database.

A real Decider on SQLite and MariaDB; grants are changed behind its back with the real store,
and the statements it sends are counted by a listener on its engines (nothing replaced).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from eximauthd.auth.grantcache import GrantCache
from eximauthd.core.decision import Decision, Reason, Result
from eximauthd.core.protocol import RelayRequest
from eximauthd.db.engine import Database
from eximauthd.db.grants import Grant, GrantStore
from eximauthd.service.decider import Decider
from eximauthd.settings import Config, PolicyConfig

from .. import servicekit as kit
from ..support import ALICE, Clock, config_for, decide_relay, engines, populate

GRANTED = RelayRequest(ALICE, "boss@partner.test", "x@remote.test", "")
NOT_GRANTED = RelayRequest(ALICE, "boss@elsewhere.test", "x@remote.test", "")
PARTNER = Grant(ALICE, "@partner.test")
ELSEWHERE = Grant(ALICE, "@elsewhere.test")


def _config(db_url: str, seconds: int) -> Config:
    return replace(config_for(db_url), policy=PolicyConfig(grant_cache_seconds=seconds))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def decider(db_url: str, clock: Clock) -> Iterator[Decider]:
    """alice with a grant for @partner.test; grants remembered 10 s on a clock the test moves."""
    populate(db_url)
    made = Decider(_config(db_url, 10))
    made.grant_cache = GrantCache(10, clock=clock)
    yield made
    made.close()


@pytest.fixture
def statements(decider: Decider) -> Iterator[list[str]]:
    """The statements the decider sends from now on."""
    sent: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        sent.append(statement)

    used = engines(decider.db)
    for engine in used:
        sa.event.listen(engine, "before_cursor_execute", listen)
    yield sent
    for engine in used:
        sa.event.remove(engine, "before_cursor_execute", listen)


def _change(db: Database, *, add: Grant | None = None, remove: Grant | None = None) -> None:
    """Change the grants behind the decider's back, as a panel or another host would."""
    store = GrantStore(db)
    if add is not None:
        assert store.add(add)
    if remove is not None:
        assert store.remove(remove)


def _yes(decision: Decision) -> bool:
    return decision.result is Result.YES


def test_a_granted_sender_is_read_once_then_answered_from_memory(
        decider: Decider, statements: list[str]) -> None:
    first = decide_relay(decider, GRANTED)
    assert first == Decision.yes(Reason.GRANT_DOMAIN)
    assert len(statements) == 1
    for _ in range(5):
        assert decide_relay(decider, GRANTED) == first
    assert len(statements) == 1


def test_a_refusal_is_read_afresh_so_a_grant_just_added_works_at_once(
        decider: Decider, statements: list[str]) -> None:
    assert _yes(decide_relay(decider, GRANTED))  # alice's grants are now remembered
    assert decide_relay(decider, NOT_GRANTED) == Decision.no(Reason.SENDER_MISMATCH)
    assert len(statements) == 2
    _change(decider.db, add=ELSEWHERE)
    assert decide_relay(decider, NOT_GRANTED) == Decision.yes(Reason.GRANT_DOMAIN)


def test_a_grant_removed_behind_its_back_holds_until_the_ttl_ends(
        decider: Decider, clock: Clock) -> None:
    """The documented bound: a removal no FORGET announced is honoured at most that long."""
    assert _yes(decide_relay(decider, GRANTED))
    _change(decider.db, remove=PARTNER)
    clock.now += 9.9
    assert _yes(decide_relay(decider, GRANTED))
    clock.now += 0.1
    assert decide_relay(decider, GRANTED) == Decision.no(Reason.SENDER_MISMATCH)


def test_forget_of_the_login_ends_its_remembered_grants_at_once(decider: Decider) -> None:
    assert _yes(decide_relay(decider, GRANTED))
    _change(decider.db, remove=PARTNER)
    assert decider.forget("Alice@Example.TEST") == Decision.yes(Reason.FORGOTTEN)
    assert decide_relay(decider, GRANTED) == Decision.no(Reason.SENDER_MISMATCH)


@pytest.mark.parametrize("address", ["", "not an address", "a@b@c", "x" * 400])
def test_forget_of_a_malformed_address_is_yes_and_keeps_the_others(
        decider: Decider, statements: list[str], address: str) -> None:
    assert _yes(decide_relay(decider, GRANTED))
    assert decider.forget(address) == Decision.yes(Reason.FORGOTTEN)
    assert _yes(decide_relay(decider, GRANTED))
    assert len(statements) == 1


def test_a_remembered_grant_is_not_another_logins(decider: Decider) -> None:
    assert _yes(decide_relay(decider, GRANTED))
    bob = replace(GRANTED, authenticated_id="bob@example.test")
    assert decide_relay(decider, bob) == Decision.no(Reason.SENDER_MISMATCH)


def test_off_by_default_every_granted_relay_reads_the_database(db_url: str) -> None:
    """With the default 0 a removal holds at the next RELAY: what several MX sharing one
    database rely on (the FORGET of `grant remove` reaches only the local service)."""
    populate(db_url)
    assert Config().policy.grant_cache_seconds == 0
    decider = Decider(config_for(db_url))
    try:
        assert _yes(decide_relay(decider, GRANTED))
        _change(decider.db, remove=PARTNER)
        assert decide_relay(decider, GRANTED) == Decision.no(Reason.SENDER_MISMATCH)
        _change(decider.db, add=PARTNER)
        assert _yes(decide_relay(decider, GRANTED))
    finally:
        decider.close()


def test_the_database_gone_defers_what_memory_cannot_allow(decider: Decider) -> None:
    """Remembered grants still allow; a sender they do not allow defers, never no or yes."""
    assert _yes(decide_relay(decider, GRANTED))
    decider.db.dispose()
    decider.grants = GrantStore(Database(replace(
        decider.config.database, url="mysql+pymysql://root@127.0.0.1:9/nowhere",
        connect_timeout=1)))
    assert _yes(decide_relay(decider, GRANTED))
    assert decide_relay(decider, NOT_GRANTED) == Decision.defer(Reason.DATABASE_UNAVAILABLE)


# --- through `eximauthd serve` and the CLI -------------------------------------------------

def test_grant_remove_ends_a_remembered_grant_at_once_in_the_service(sqlite_url: str) -> None:
    populate(sqlite_url)
    spoof = kit.relay_line(ALICE, "boss@partner.test", "x@remote.test")
    with kit.running(sqlite_url, extra_env={
            "EXIMAUTHD_POLICY_GRANT_CACHE_SECONDS": "3600"}) as served:
        assert served.ask(spoof) == b"yes\n"
        assert served.ask(spoof) == b"yes\n"
        removed = subprocess.run(
            [sys.executable, "-m", "eximauthd", "grant", "remove", ALICE, "@partner.test"],
            env=served.env, capture_output=True, text=True, timeout=60, check=False)
        assert removed.returncode == 0, removed.stderr
        assert served.ask(spoof) == b"no\n"
