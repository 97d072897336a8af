"""Rate limits across a sync: counts handed to a sync still count until the read back holds them.

A sync takes the unwritten counts, writes them in a worker thread and reads the totals back;
RELAYs keep being answered meanwhile.  These tests pin that no moment of that round trip (nor a
failed one) lets a user relay past a limit it has reached.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from eximauthd.core.decision import Decision, Reason
from eximauthd.core.limits import Limit
from eximauthd.core.ratelimit import RateLimiter
from eximauthd.db import tables
from eximauthd.db.counters import RateKey, RateStore
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig, RateLimitConfig

from .. import servicekit as kit
from ..servicekit import relay
from ..support import (
    ALICE,
    BOB,
    MARIADB_HOST,
    MARIADB_PORT,
    SYNC_MS,
    populate,
    rate_env,
    wait_for,
)

HOUR = 3600
OVER = Decision.defer(Reason.RATE_LIMIT, "messages-1h")


class Clock:
    """A settable clock (the pure limiter only; services run in real time)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _limiter(clock: Clock) -> RateLimiter:
    config = RateLimitConfig(recipients=("1000/1h",), messages=("2/1h",))
    return RateLimiter(config, clock=clock, monotonic=clock)


def _send(limiter: RateLimiter, txn: str, rcpts: int = 3) -> list[Decision | None]:
    return [limiter.admit(ALICE, txn) for _ in range(rcpts)]


class TestCountsInFlight:
    def test_a_message_over_the_limit_is_deferred_while_a_sync_carries_the_others(self) -> None:
        """A RELAY between take() and synced() still sees the counts the sync carries."""
        limiter = _limiter(Clock())
        assert _send(limiter, "1.1") + _send(limiter, "1.2") == [None] * 6
        limiter.take()  # the sync is writing them; its answer has not come back
        assert _send(limiter, "1.3") == [OVER] * 3

    def test_a_failed_sync_keeps_the_user_over_the_limit_before_and_after(self) -> None:
        """While a sync that will fail runs, and once it has failed, the counts still count."""
        clock = Clock()
        limiter = _limiter(clock)
        assert _send(limiter, "1.1") + _send(limiter, "1.2") == [None] * 6
        batch = limiter.take()
        assert limiter.admit(ALICE, "1.3") == OVER
        limiter.failed(batch)
        assert limiter.admit(ALICE, "1.3") == OVER
        assert limiter.take().deltas == batch.deltas  # written by the next sync, once

    def test_the_read_back_replaces_the_batch_and_keeps_what_came_after(self) -> None:
        """A message admitted during a sync counts once: pending, not in the read back."""
        clock = Clock()
        limiter = _limiter(clock)
        assert _send(limiter, "1.1") == [None] * 3
        batch = limiter.take()
        assert _send(limiter, "1.2") == [None] * 3  # admitted while the sync runs
        limiter.synced(batch, dict(batch.deltas), {})  # the table held nothing else
        assert limiter.admit(ALICE, "1.3") == OVER
        assert limiter.take().deltas == {
            (ALICE, "recipients", HOUR, int(clock.now // HOUR)): 3,
            (ALICE, "messages", HOUR, int(clock.now // HOUR)): 1}

    def test_a_reset_read_back_still_lowers_the_totals(self) -> None:
        """Fail closed does not mean stuck: `throttle reset` (rows deleted) gives the quota back."""
        limiter = _limiter(Clock())
        assert _send(limiter, "1.1") + _send(limiter, "1.2") == [None] * 6
        limiter.synced(limiter.take(), {}, {})  # the rows were deleted under the sync
        assert _send(limiter, "1.3") == [None] * 3

    def test_an_override_read_during_a_sync_applies_to_the_counts_in_flight(self) -> None:
        """A per-user limit read back is checked against the counts still in flight too."""
        limiter = _limiter(Clock())
        first = limiter.take()
        limiter.synced(first, {}, {ALICE: {"messages": (Limit(HOUR, 1),)}})
        assert _send(limiter, "1.1") == [None] * 3
        limiter.take()
        assert limiter.admit(ALICE, "1.2") == OVER

    def test_a_failed_sync_then_a_good_one_leaves_the_exact_quota(self) -> None:
        """Counts carried through a failed sync are counted once, not twice, after the retry."""
        clock = Clock()
        limiter = _limiter(clock)
        assert _send(limiter, "1.1") == [None] * 3
        limiter.failed(limiter.take())
        retry = limiter.take()
        limiter.synced(retry, dict(retry.deltas), {})
        assert _send(limiter, "1.2") == [None] * 3  # the second of two messages still fits
        assert limiter.admit(ALICE, "1.3") == OVER

    def test_a_sync_answering_takes_back_only_its_own_batch(self) -> None:
        """Two batches in flight: the first one's read back leaves the second's counts counted;
        once both have answered nothing is left in flight."""
        clock = Clock()
        limiter = _limiter(clock)
        assert _send(limiter, "1.1") == [None] * 3
        first = limiter.take()
        assert _send(limiter, "1.2") == [None] * 3
        second = limiter.take()
        limiter.synced(first, dict(first.deltas), {})
        assert limiter.admit(ALICE, "1.3") == OVER  # the second message is still in flight
        limiter.failed(second)
        assert limiter.admit(ALICE, "1.3") == OVER  # and back to pending, still counted
        again = limiter.take()
        assert again.deltas == second.deltas
        limiter.synced(again, {key: 2 * n for key, n in again.deltas.items()}, {})
        assert (limiter._inflight, limiter._pending) == ({}, {})  # memory: no zero entries

    def test_a_sync_failing_gives_back_only_its_own_batch(self) -> None:
        """Two batches in flight, the first fails: the second's counts are still counted."""
        limiter = _limiter(Clock())
        assert _send(limiter, "1.1") == [None] * 3
        first = limiter.take()
        assert _send(limiter, "1.2") == [None] * 3
        limiter.take()
        limiter.failed(first)
        assert limiter.admit(ALICE, "1.3") == OVER


def test_the_shared_table_and_the_limiter_agree_across_a_sync(db_url: str) -> None:
    """With the real counters table: RELAYs during a sync, then its read back, never pass 2."""
    db = Database(DatabaseConfig(url=db_url))
    try:
        from eximauthd.db import upgrade  # noqa: PLC0415

        upgrade.upgrade(db)
        rates = RateStore(db)
        clock = Clock(time.time())
        limiter = _limiter(clock)
        assert _send(limiter, "1.1") == [None] * 3
        batch = limiter.take()
        assert _send(limiter, "1.2") == [None] * 3  # admitted while the sync runs
        assert limiter.admit(ALICE, "1.3") == OVER
        limiter.synced(batch, rates.add_and_read(batch.deltas, batch.addresses, batch.now), {})
        assert limiter.admit(ALICE, "1.3") == OVER
        batch = limiter.take()
        assert limiter.admit(ALICE, "1.3") == OVER
        shared = rates.add_and_read(batch.deltas, batch.addresses, batch.now)
        limiter.synced(batch, shared, {})
        key: RateKey = (ALICE, "messages", HOUR, int(clock.now // HOUR))
        assert shared[key] == 2
        assert limiter.admit(ALICE, "1.3") == OVER
    finally:
        db.dispose()


def test_a_relay_while_a_sync_waits_on_the_database_is_still_limited(db_url: str) -> None:
    """The real service: a sync stuck on a locked counter does not open the limit meanwhile."""
    populate(db_url)
    env = rate_env(recipients="1000/1h", messages="2/1h")
    with kit.running(db_url, extra_env=env) as served:
        time.sleep(5 * SYNC_MS / 1000)  # past the first sync (and its prune, a write too)
        db = Database(DatabaseConfig(url=db_url))
        try:
            bucket = int(time.time() // HOUR)
            # An uncommitted row on the key the next sync writes: that sync waits for it
            # (MariaDB: the row lock; SQLite: the write lock, within its 3 s busy timeout).
            with db.write("hold the rate counters") as conn:
                conn.execute(sa.insert(tables.rate_counters).values(
                    address=ALICE, kind="messages", window_seconds=HOUR, bucket=bucket,
                    count=0, expires_at=(bucket + 2) * HOUR))
                sent = [relay(served, ALICE, f"4242.{m}") for m in (1, 2) for _ in range(3)]
                time.sleep(5 * SYNC_MS / 1000)  # a sync has taken both messages and waits
                during = [relay(served, ALICE, "4242.3") for _ in range(3)]
            after = relay(served, ALICE, "4242.3")
        finally:
            db.dispose()
    assert sent == [b"yes\n"] * 6
    assert during == [b"defer rate-limit-messages-1h\n"] * 3
    assert after == b"defer rate-limit-messages-1h\n"


def _strict(clock: Clock) -> RateLimiter:
    """A limiter as a served instance starts: nobody's totals known yet."""
    config = RateLimitConfig(recipients=("1000/1h",), messages=("2/1h",))
    return RateLimiter(config, clock=clock, monotonic=clock, synced=False)


class TestUsersNotReadYet:
    """A served instance judges a user only on totals and limits a sync read for it."""

    def test_a_user_is_admitted_only_once_a_sync_read_its_totals(self) -> None:
        """A user at its limit elsewhere (or before a restart) is deferred here from the start."""
        clock = Clock()
        limiter = _strict(clock)
        assert limiter.admit(ALICE, "1.1") == Decision.defer("ratelimit-unavailable")
        assert limiter.needs_read(ALICE)
        limiter.touch(ALICE)
        batch = limiter.take()
        assert ALICE in batch.addresses
        limiter.synced(batch, {(ALICE, "messages", HOUR, int(clock.now // HOUR)): 2}, {})
        assert not limiter.needs_read(ALICE)
        assert limiter.admit(ALICE, "1.1") == OVER

    def test_an_override_applies_from_the_first_relay(self) -> None:
        """The per-user limit read with the totals is the one the first RELAY meets."""
        limiter = _strict(Clock())
        limiter.touch(ALICE)
        limiter.synced(limiter.take(), {}, {ALICE: {"messages": (Limit(HOUR, 1),)}})
        assert _send(limiter, "1.1") == [None] * 3
        assert limiter.admit(ALICE, "1.2") == OVER

    def test_a_sync_that_could_not_read_the_overrides_does_not_admit_by_the_defaults(
            self) -> None:
        """Overrides never read: the user waits (defer), never gets the default limits."""
        limiter = _strict(Clock())
        limiter.touch(ALICE)
        limiter.synced(limiter.take(), {}, None)
        assert limiter.admit(ALICE, "1.1") == Decision.defer("ratelimit-unavailable")
        limiter.synced(limiter.take(), {}, {ALICE: {"messages": (Limit(HOUR, 1),)}})
        assert _send(limiter, "1.1") == [None] * 3
        batch = limiter.take()
        limiter.synced(batch, dict(batch.deltas), None)  # the overrides' read failed this time
        assert limiter.admit(ALICE, "1.2") == OVER  # the last overrides read stay

    def test_a_user_back_after_a_pause_is_read_again(self) -> None:
        """Totals kept from before a long pause are refreshed before the user is judged."""
        clock = Clock()
        limiter = _strict(clock)
        limiter.touch(ALICE)
        limiter.synced(limiter.take(), {}, {})
        assert limiter.admit(ALICE, "1.1") is None
        clock.now += 601  # idle past the read-back window: other instances may have counted
        limiter.synced(limiter.take(), {}, {})
        assert limiter.needs_read(ALICE)
        assert limiter.admit(ALICE, "1.2") == Decision.defer("ratelimit-unavailable")

    def test_a_failed_first_sync_admits_nothing(self) -> None:
        """The database gone at start: RELAYs defer until a sync succeeds, not for 30 s."""
        limiter = _strict(Clock())
        limiter.touch(ALICE)
        limiter.failed(limiter.take())
        assert limiter.admit(ALICE, "1.1") == Decision.defer("ratelimit-unavailable")
        assert limiter.staleness == float("inf")


def test_a_restarted_service_knows_the_counts_from_its_first_relay(db_url: str) -> None:
    """A user at its limit before a restart (or on another instance) is deferred at once."""
    populate(db_url)
    db = Database(DatabaseConfig(url=db_url))
    try:
        bucket = int(time.time() // HOUR)
        RateStore(db).add_and_read({(ALICE, "messages", HOUR, bucket): 2}, (), int(time.time()))
    finally:
        db.dispose()
    # The default sync interval (1 s): the first RELAY comes well before a second sync.
    with kit.running(db_url, extra_env={"EXIMAUTHD_RATELIMIT_MESSAGES": "2/1h"}) as served:
        first = [relay(served, ALICE, "4242.1") for _ in range(3)]
        assert relay(served, BOB, "4243.1") == b"yes\n"  # its own count, read as fast
    assert first == [b"defer rate-limit-messages-1h\n"] * 3


def test_a_user_never_read_is_deferred_while_the_database_is_cut(mariadb_url: str) -> None:
    """Database gone: a user whose totals were never read here gets a 4xx, never a blind yes."""
    populate(mariadb_url)
    proxy = kit.TcpProxy(MARIADB_HOST, MARIADB_PORT)
    proxy.start()
    url = mariadb_url.replace(f":{MARIADB_PORT}/", f":{proxy.port}/")
    try:
        with kit.running(url, extra_env=rate_env(messages="2/1h")) as served:
            assert relay(served, ALICE, "4242.1") == b"yes\n"
            proxy.stop()
            during = (relay(served, ALICE, "4242.2"), relay(served, BOB, "4243.1"))
            proxy.start()
            assert wait_for(lambda: relay(served, BOB, "4243.1") == b"yes\n")
    finally:
        proxy.stop()
    # alice's totals were read before the cut; bob's never were.
    assert during == (b"yes\n", b"defer ratelimit-unavailable\n")
