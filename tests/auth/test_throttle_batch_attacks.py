"""A guesser against the successes taken back in batches (release_delay_ms): his own account's
logins mixed with guesses, guesses timed around a batch, two instances, a batch that fails.
He never gets more distinct password checks than the limits, and a batch takes back only the
successes' own rows."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading

import pytest
import sqlalchemy as sa

from eximauthd.auth.throttle import Throttle
from eximauthd.core.decision import Reason
from eximauthd.db import tables
from eximauthd.db.counters import AttemptStore
from eximauthd.db.engine import Database
from eximauthd.settings import ThrottleConfig

from ..support import credentials, wait_for

T0 = dt.datetime(2026, 11, 28, 12, 0, 0)
KEY = b"throttle-batch-attack-key-0123456789"
ATTACKER = "mallory@example.test"
VICTIM = "victim@example.test"
FROM = "203.0.113.5"
LIMIT = 6
HOUR_MS = 3_600_000


def _throttle(database: Database, **settings: object) -> Throttle:
    config = ThrottleConfig(**{"max_failures_per_ip": 100, "max_failures_per_user": LIMIT,
                               "trusted_network_seconds": 0, **settings})  # type: ignore[arg-type]
    return Throttle(config, database, KEY, clock=lambda: T0)


def _counts(database: Database) -> dict[tuple[str, str], int]:
    return {(r.scope, r.subject): r.failures
            for r in AttemptStore(database).list(T0 - dt.timedelta(days=1))}


def _login(guard: Throttle, user: str, password: str, ip: str = FROM) -> bool:
    """One AUTH as the service runs it: reserve, check (the password is "right" or not),
    settle.  False: refused unchecked by the throttle."""
    refused, reservation = guard.reserve(credentials(user, password, ip))
    if refused is not None:
        assert refused.reason in (Reason.THROTTLED_USER, Reason.THROTTLED_IP)
        return False
    guard.settle(reservation, succeeded=password == "right",
                 credentials=credentials(user, password, ip))
    return True


@pytest.mark.parametrize("delay_ms", [0, 1, HOUR_MS])
def test_own_logins_mixed_with_guesses_never_buy_a_guess(database: Database,
                                                         delay_ms: int) -> None:
    """However the guesser interleaves successful logins to his own account (held for a batch,
    flushed between guesses or not) with guesses at the victim, the victim's password is
    checked at most LIMIT times, and the guesses stay counted after every batch."""
    guard = _throttle(database, release_delay_ms=delay_ms)
    checked = 0
    for guess in range(3 * LIMIT):
        for _ in range(3):
            assert _login(guard, ATTACKER, "right")
        checked += _login(guard, VICTIM, f"guess{guess}")
        if guess % 2:
            guard.flush()
    guard.close()
    assert checked == LIMIT
    assert _counts(database) == {("ip", "203.0.113.5/32"): LIMIT, ("user", VICTIM): LIMIT}
    assert not _login(guard, VICTIM, "one-more")


def test_a_batch_deletes_no_failure_of_another_password(database: Database) -> None:
    """Successes of the victim himself, held and then flushed, take back their own rows only:
    the guesser's failures at the same account, from the same network, stay counted."""
    guard = _throttle(database, release_delay_ms=HOUR_MS)
    for guess in range(2):
        assert _login(guard, VICTIM, f"guess{guess}")
    for _ in range(3):
        assert _login(guard, VICTIM, "right")
    assert _counts(database)[("user", VICTIM)] == 3
    guard.flush()
    assert _counts(database) == {("ip", "203.0.113.5/32"): 2, ("user", VICTIM): 2}


def test_two_instances_share_the_limit_with_batches_held_on_both(
        database: Database) -> None:
    """Two services on one database, each holding its own batch: the guesses both let through
    still number LIMIT at most."""
    guards = [_throttle(database, release_delay_ms=HOUR_MS) for _ in range(2)]
    checked = 0
    for guess in range(2 * LIMIT):
        guard = guards[guess % 2]
        assert _login(guard, ATTACKER, "right")
        checked += _login(guard, VICTIM, f"guess{guess}", ip=f"198.51.100.{guess}")
        guards[(guess + 1) % 2].flush()
    for guard in guards:
        guard.close()
    assert checked == LIMIT
    assert _counts(database)[("user", VICTIM)] == LIMIT


def test_a_batch_that_fails_keeps_the_successes_counted(database: Database) -> None:
    """The batch DELETE failing errs on the side of the limit: nothing is taken back, and
    the guesses counted meanwhile are all still there."""
    guard = _throttle(database, release_delay_ms=HOUR_MS)
    assert _login(guard, VICTIM, "guess")
    assert _login(guard, ATTACKER, "right")
    with database.primary.begin() as conn:
        conn.execute(sa.text("ALTER TABLE eximauthd_auth_attempts RENAME TO parked"))
    guard.flush()  # fails: logged, not raised
    with database.primary.begin() as conn:
        conn.execute(sa.text("ALTER TABLE parked RENAME TO eximauthd_auth_attempts"))
    assert _counts(database)[("user", VICTIM)] == 1
    assert _counts(database)[("user", ATTACKER)] == 1
    guard.close()
    assert ("user", ATTACKER) in _counts(database)  # that batch is gone for good
    assert tables.auth_attempts.name == "eximauthd_auth_attempts"



def _blocked_deletes(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
        "AND INFO LIKE 'DELETE FROM eximauthd_auth_attempts%'")).scalar_one())


def test_close_waits_for_the_batch_already_under_way(mariadb_url: str) -> None:
    """Shutdown: a batch whose DELETE is waiting (here on another transaction's row lock)
    when close() is called is waited for, so that no success stays counted after the service
    stopped (close() used to return at once, and the process could exit mid-DELETE)."""
    from eximauthd.db import upgrade  # noqa: PLC0415
    from eximauthd.settings import DatabaseConfig  # noqa: PLC0415

    database = Database(DatabaseConfig(url=mariadb_url))
    upgrade.upgrade(database)
    guard = _throttle(database, release_delay_ms=HOUR_MS)
    flushing, closing = threading.Thread(target=guard.flush), threading.Thread(target=guard.close)
    try:
        assert _login(guard, ATTACKER, "ready")  # a failure: counted, not batched
        assert _login(guard, ATTACKER, "right")  # held for the batch
        with database.primary.connect() as conn, database.primary.connect() as watcher:
            # Record locks only: other users' reservations are not held up.
            locker = conn.execution_options(isolation_level="READ COMMITTED")
            with locker.begin():
                locker.execute(sa.text(
                    "SELECT * FROM eximauthd_auth_attempts WHERE scope = 'user' "
                    "AND subject = :who FOR UPDATE"), {"who": ATTACKER})
                flushing.start()  # the batch (as its timer sends it), now waiting
                for _ in range(3000):
                    if _blocked_deletes(watcher):
                        break
                    watcher.execute(sa.text("DO SLEEP(0.01)"))
                assert _blocked_deletes(watcher) == 1
                closing.start()
                # While the DELETE waits, close() cannot have taken the rows back.
                closing.join(timeout=2)
                assert closing.is_alive()
            closing.join()
        flushing.join()
        assert _counts(database) == {("ip", "203.0.113.5/32"): 1, ("user", ATTACKER): 1}
    finally:
        for thread in (flushing, closing):
            if thread.is_alive():
                thread.join()
        database.dispose()


def test_the_timer_of_a_held_batch_is_a_daemon(database: Database) -> None:
    """A held batch never keeps the process alive: its timer thread is a daemon (a process
    that exits without close() is not held up for release_delay_ms)."""
    guard = _throttle(database, release_delay_ms=HOUR_MS)
    before = set(threading.enumerate())
    try:
        assert _login(guard, VICTIM, "right")
        timers = [t for t in set(threading.enumerate()) - before
                  if isinstance(t, threading.Timer)]
        assert len(timers) == 1
        assert timers[0].daemon is True
    finally:
        guard.close()


def test_a_success_held_while_a_batch_is_sent_goes_with_the_next_one(
        mariadb_url: str) -> None:
    """A success that arrives while its predecessors' DELETE waits (a row lock) is not left
    counted: the timer arms again once that batch is sent, with no further login to wake it
    and no close()."""
    from eximauthd.db import upgrade  # noqa: PLC0415
    from eximauthd.settings import DatabaseConfig  # noqa: PLC0415

    database = Database(DatabaseConfig(url=mariadb_url))
    upgrade.upgrade(database)
    guard = _throttle(database, release_delay_ms=1000)
    try:
        # The lock must be taken before the first batch's timer fires (1 s): on a machine
        # too busy for that, the round is played again with other users.
        for attempt in range(5):
            first, later = f"first{attempt}@example.test", f"later{attempt}@example.test"
            with database.primary.connect() as conn, database.primary.connect() as watcher:
                locker = conn.execution_options(isolation_level="READ COMMITTED")
                # Reserved before the lock (an INSERT would wait behind the batch's locks),
                # settled while the batch is being sent.
                refused, late = guard.reserve(credentials(later, "right", "198.51.100.9"))
                assert refused is None
                assert late.batched
                with locker.begin():
                    assert _login(guard, first, "right")  # held; the timer fires in 1 s
                    locker.execute(sa.text(
                        "SELECT * FROM eximauthd_auth_attempts WHERE scope = 'user' "
                        "AND subject = :who FOR UPDATE"), {"who": first})
                    if ("user", first) not in _counts(database):
                        guard.settle(late, succeeded=True, credentials=credentials(
                            later, "right", "198.51.100.9"))
                        guard.flush()
                        continue  # the batch went before the lock: play again
                    for _ in range(3000):
                        if _blocked_deletes(watcher):
                            break
                        watcher.execute(sa.text("DO SLEEP(0.01)"))
                    assert _blocked_deletes(watcher) == 1
                    guard.settle(late, succeeded=True,
                                 credentials=credentials(later, "right", "198.51.100.9"))
            break
        else:
            pytest.fail("never took the lock before the batch's timer fired")
        # A liveness bound, not a timing: the next batch comes by itself.
        wait_for(lambda: not _counts(database), timeout=30)
        assert _counts(database) == {}
    finally:
        guard.close()
        database.dispose()


def test_a_success_held_while_a_batch_waits_on_sqlite_goes_with_the_next_one(
        sqlite_url: str) -> None:
    """The same on SQLite, where another connection's write lock holds the batch's DELETE
    (its busy timeout is 3 s; the lock is held well under that)."""
    from eximauthd.db import upgrade  # noqa: PLC0415
    from eximauthd.settings import DatabaseConfig  # noqa: PLC0415

    database = Database(DatabaseConfig(url=sqlite_url))
    upgrade.upgrade(database)
    guard = _throttle(database, release_delay_ms=400)
    path = sqlite_url.removeprefix("sqlite:///")
    try:
        refused, late = guard.reserve(credentials(VICTIM, "right", "198.51.100.9"))
        assert refused is None
        assert late.batched
        assert _login(guard, ATTACKER, "right")  # held; its batch goes in 0.4 s
        locker = sqlite3.connect(path, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")  # every other writer waits from here
            threading.Event().wait(0.8)  # the batch is sent meanwhile, and waits
            guard.settle(late, succeeded=True,
                         credentials=credentials(VICTIM, "right", "198.51.100.9"))
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        # A liveness bound, not a timing: the next batch comes by itself.
        wait_for(lambda: not _counts(database), timeout=30)
        assert _counts(database) == {}
    finally:
        guard.close()
        database.dispose()


def test_no_timer_is_left_running_once_the_batch_is_sent(database: Database) -> None:
    """Nothing held, nothing armed: after its batch is taken back, no timer thread of the
    throttle keeps waking up (one per release_delay_ms, for ever)."""
    guard = _throttle(database, release_delay_ms=20)
    before = set(threading.enumerate())
    try:
        assert _login(guard, VICTIM, "right")

        def timers() -> list[threading.Thread]:
            return [t for t in set(threading.enumerate()) - before
                    if isinstance(t, threading.Timer) and t.is_alive()]

        wait_for(lambda: not _counts(database) and not timers(), timeout=30)  # liveness only
        assert _counts(database) == {}
        assert timers() == []
    finally:
        guard.close()
