"""The Throttle class on its own, against real databases: what a reservation counts, what
taking it back deletes, which networks a success remembers (and how often it writes them), what
pruning keeps, and what happens when the database fails under it.

A clock the test sets stands in for the wall clock (``Throttle(clock=...)``), and a settable
``time.monotonic`` for the touch interval of :meth:`Throttle.succeeded`.  Storage failures are
real: a table dropped under a running throttle.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from eximauthd.auth import throttle as throttle_module
from eximauthd.auth.throttle import Throttle, load_secret
from eximauthd.core.clients import NO_ADDRESS
from eximauthd.core.decision import Result
from eximauthd.db import tables
from eximauthd.db.counters import AttemptStore, KnownNetworkStore
from eximauthd.db.engine import Database
from eximauthd.db.prepared import Lookup
from eximauthd.settings import ThrottleConfig

from ..support import credentials, wait_for

T0 = dt.datetime(2026, 11, 28, 12, 0, 0)
KEY = b"throttle-unit-test-key-0123456789"
ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
HOME = "192.0.2.1"  # alice's usual network
ELSEWHERE = "198.51.100.1"
MISSING = "table missing; run `eximauthd db upgrade` (or check the [legacy] table name)"


class Clock:
    """The throttle's wall clock, set by the test."""

    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The monotonic clock eximauthd.auth.throttle reads (and only it); set ``[0]``."""
    now = [1000.0]
    monkeypatch.setattr(throttle_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _throttle(database: Database, clock: Clock, **settings: object) -> Throttle:
    config = ThrottleConfig(**settings)  # type: ignore[arg-type]
    return Throttle(config, database, KEY, clock=clock)


def _counts(database: Database) -> dict[tuple[str, str], int]:
    """Every subject's counted password checks, however old."""
    return {(r.scope, r.subject): r.failures
            for r in AttemptStore(database).list(T0 - dt.timedelta(days=365))}


def _known(database: Database, user: str, network: str, since: dt.datetime) -> bool:
    return KnownNetworkStore(database).is_known(user, network, since)


def _known_rows(database: Database) -> int:
    with database.read("count known networks") as conn:
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(tables.known_clients)).scalar_one())


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "eximauthd.throttle" and r.levelno == logging.WARNING]


def test_the_repr_shows_the_limits_and_never_the_key(database: Database, clock: Clock) -> None:
    """repr(Throttle) names the window and both limits, and holds nothing of the key."""
    guard = _throttle(database, clock, window_seconds=600, max_failures_per_ip=7,
                      max_failures_per_user=3)
    shown = repr(guard)
    assert shown == "Throttle(window=600s, ip=7, user=3)"
    assert KEY.decode() not in shown
    assert KEY.hex() not in shown


def test_ipv6_clients_are_counted_per_64(database: Database, clock: Clock) -> None:
    """Three hosts of one IPv6 /64 share its limit; the next /64 has its own."""
    guard = _throttle(database, clock, max_failures_per_ip=2, max_failures_per_user=100)
    answers = [guard.reserve(credentials(user, "guess", f"2001:db8:1:2::{host}"))[0]
               for user, host in ((ALICE, "a"), (BOB, "b"), (CAROL, "c"))]
    assert answers[:2] == [None, None]
    assert answers[2] is not None
    assert (answers[2].result, answers[2].reason) == (Result.NO, "throttled-ip")
    assert guard.reserve(credentials(CAROL, "guess", "2001:db8:1:3::c"))[0] is None
    assert _counts(database)[("ip", "2001:db8:1:2::/64")] == 2


def test_an_exempt_ipv6_network_is_never_locked(database: Database, clock: Clock) -> None:
    """Guesses for many users from an exempt IPv6 network are never refused per network."""
    guard = _throttle(database, clock, max_failures_per_ip=1, max_failures_per_user=100,
                      exempt_networks=("2001:db8:e::/48",))
    for user in (ALICE, BOB, CAROL):
        assert guard.reserve(credentials(user, "guess", "2001:db8:e::5"))[0] is None
    assert not any(scope == "ip" for scope, _ in _counts(database))


def test_clients_outside_the_exempt_networks_keep_their_limit(database: Database,
                                                              clock: Clock) -> None:
    """With an exempt network configured, another network (and no address) is still refused."""
    guard = _throttle(database, clock, max_failures_per_ip=1, max_failures_per_user=100,
                      exempt_networks=("203.0.113.0/24",))
    for ip in (ELSEWHERE, ""):
        assert guard.reserve(credentials(ALICE, f"guess from {ip!r}", ip))[0] is None
        refused = guard.reserve(credentials(BOB, f"guess from {ip!r}", ip))[0]
        assert refused is not None
        assert (refused.result, refused.reason) == (Result.NO, "throttled-ip")
    assert _counts(database) == {("ip", "198.51.100.1/32"): 1, ("ip", NO_ADDRESS): 1,
                                 ("user", ALICE): 2}


def test_one_wrong_password_under_two_spellings_of_a_user_counts_once(
        database: Database, clock: Clock) -> None:
    """The password digest is of the canonical address: Alice@Example.TEST is alice."""
    guard = _throttle(database, clock, max_failures_per_ip=100, max_failures_per_user=1)
    assert guard.reserve(credentials("Alice@Example.TEST", "stale", HOME))[0] is None
    assert guard.reserve(credentials(ALICE, "stale", ELSEWHERE))[0] is None
    assert _counts(database)[("user", ALICE)] == 1


def test_a_reservation_nonce_is_random_and_fills_its_column(database: Database,
                                                            clock: Clock) -> None:
    """The nonce is 32 random hex digits, as wide as the column MariaDB stores it in."""
    guard = _throttle(database, clock)
    nonces = {guard.reserve(credentials(ALICE, f"guess-{i}", HOME))[1].nonce for i in range(3)}
    width = tables.auth_attempts.c.nonce.type.length  # type: ignore[attr-defined]
    assert width == 32
    assert len(nonces) == 3
    for nonce in nonces:
        assert len(nonce) == width
        int(nonce, 16)


def test_a_refused_request_takes_back_only_the_rows_it_added(database: Database,
                                                             clock: Clock) -> None:
    """Refused over the network limit, a stale password keeps its earlier count for the user."""
    guard = _throttle(database, clock, max_failures_per_ip=2, max_failures_per_user=100)
    assert guard.reserve(credentials(ALICE, "stale", HOME))[0] is None
    assert guard.reserve(credentials(BOB, "guess-1", ELSEWHERE))[0] is None
    assert guard.reserve(credentials(CAROL, "guess-2", ELSEWHERE))[0] is None
    refused = guard.reserve(credentials(ALICE, "stale", ELSEWHERE))[0]
    assert refused is not None
    assert (refused.result, refused.reason) == (Result.NO, "throttled-ip")
    assert _counts(database) == {("ip", "192.0.2.1/32"): 1, ("ip", "198.51.100.1/32"): 2,
                                 ("user", ALICE): 1, ("user", BOB): 1, ("user", CAROL): 1}


def test_abandoning_takes_back_only_the_rows_the_reservation_added(database: Database,
                                                                   clock: Clock) -> None:
    """A check that never ran is uncounted; the same password counted before stays counted."""
    guard = _throttle(database, clock)
    _, fresh = guard.reserve(credentials(BOB, "guess", ELSEWHERE))
    guard.abandon(fresh)
    assert _counts(database) == {}
    _, first = guard.reserve(credentials(ALICE, "stale", HOME))
    guard.settle(first, succeeded=False, credentials=credentials(ALICE, "pw", HOME))
    _, second = guard.reserve(credentials(ALICE, "stale", ELSEWHERE))
    guard.abandon(second)
    assert _counts(database) == {("ip", "192.0.2.1/32"): 1, ("user", ALICE): 1}


def test_a_success_takes_back_its_password_counted_earlier_too(database: Database,
                                                               clock: Clock) -> None:
    """A password that failed (changed meanwhile) and then succeeded is no longer counted."""
    guard = _throttle(database, clock)
    _, failed = guard.reserve(credentials(ALICE, "new-password", HOME))
    guard.settle(failed, succeeded=False, credentials=credentials(ALICE, "pw", HOME))
    assert _counts(database) == {("ip", "192.0.2.1/32"): 1, ("user", ALICE): 1}
    _, right = guard.reserve(credentials(ALICE, "new-password", HOME))
    guard.settle(right, succeeded=True, credentials=credentials(ALICE, "pw", HOME))
    guard.flush()
    assert _counts(database) == {}
    assert _known(database, ALICE, "192.0.2.1/32", T0)


def test_a_release_that_fails_is_logged_without_the_password(
        database: Database, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """Abandon and a success on a lost table: one warning each, no exception, no secret."""
    guard = _throttle(database, clock)
    _, abandoned = guard.reserve(credentials(BOB, "bobs-secret", ELSEWHERE))
    _, succeeded = guard.reserve(credentials(ALICE, "alices-secret", HOME))
    tables.auth_attempts.drop(database.primary)
    with caplog.at_level(logging.WARNING, logger="eximauthd.throttle"):
        guard.abandon(abandoned)
        guard.settle(succeeded, succeeded=True, credentials=credentials(ALICE, "pw", HOME))
        guard.flush()
    assert _warnings(caplog) == [
        f"could not release a reserved password check: release password check: {MISSING}",
        f"could not release 1 reserved password checks: release password checks: {MISSING}"]
    # The success is still remembered: the release failing does not stop it.
    assert _known(database, ALICE, "192.0.2.1/32", T0)


def test_one_reservation_in_prune_every_prunes(database: Database, clock: Clock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With a prune every 4 reservations, an old row outlives the 2nd and 3rd, not the 4th."""
    monkeypatch.setattr(throttle_module, "_PRUNE_EVERY", 4)
    guard = _throttle(database, clock, window_seconds=900)
    guard.reserve(credentials(BOB, "old-guess", ELSEWHERE))
    clock.advance(7200)
    guard.reserve(credentials(ALICE, "guess-1", HOME))
    guard.reserve(credentials(ALICE, "guess-2", HOME))
    assert ("user", BOB) in _counts(database)
    guard.reserve(credentials(ALICE, "guess-3", HOME))
    assert _counts(database) == {("ip", "192.0.2.1/32"): 3, ("user", ALICE): 3}


def test_pruning_keeps_networks_still_trusted(database: Database, clock: Clock,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A network known for 2 hours of a trusted day outlives a prune that drops old counts."""
    monkeypatch.setattr(throttle_module, "_PRUNE_EVERY", 2)
    guard = _throttle(database, clock, window_seconds=900, trusted_network_seconds=86400)
    guard.succeeded(credentials(ALICE, "pw", HOME))
    guard.reserve(credentials(BOB, "old-guess", ELSEWHERE))
    clock.advance(7200)
    guard.reserve(credentials(CAROL, "guess", ELSEWHERE))  # the second reservation prunes
    assert ("user", BOB) not in _counts(database)
    assert _known(database, ALICE, "192.0.2.1/32", T0)


def test_a_prune_that_fails_is_logged_and_the_reservation_stands(
        database: Database, clock: Clock, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Known networks lost: the prune warns, the old counts still go, the request is answered."""
    monkeypatch.setattr(throttle_module, "_PRUNE_EVERY", 2)
    guard = _throttle(database, clock, window_seconds=900, trusted_network_seconds=86400)
    guard.reserve(credentials(BOB, "old-guess", ELSEWHERE))
    tables.known_clients.drop(database.primary)
    clock.advance(7200)
    with caplog.at_level(logging.WARNING, logger="eximauthd.throttle"):
        refused, reservation = guard.reserve(credentials(CAROL, "guess", ELSEWHERE))
    assert refused is None
    assert _warnings(caplog) == [
        f"could not prune throttling rows: prune known networks: {MISSING}"]
    assert _counts(database) == {("ip", "198.51.100.1/32"): 1, ("user", CAROL): 1}
    assert reservation.subjects == (("ip", "198.51.100.1/32"), ("user", CAROL))


@pytest.mark.parametrize(("username", "client_ip", "trusted"), [
    (ALICE, HOME, 0),                 # trusting known networks is off
    (ALICE, "", 86400),               # no client address: no network to trust
])
def test_a_success_remembers_no_network_when_there_is_none_to_trust(
        database: Database, clock: Clock, caplog: pytest.LogCaptureFixture,
        username: str, client_ip: str, trusted: int) -> None:
    """Nothing is written (and nothing fails) without an address or the setting."""
    guard = _throttle(database, clock, trusted_network_seconds=trusted)
    _, reservation = guard.reserve(credentials(username, "right-password", client_ip))
    with caplog.at_level(logging.WARNING, logger="eximauthd.throttle"):
        guard.settle(reservation, succeeded=True,
                     credentials=credentials(username, "pw", client_ip))
        guard.succeeded(credentials(username, "pw", client_ip))
        guard.flush()
    assert _known_rows(database) == 0
    assert _warnings(caplog) == []
    assert _counts(database) == {}


def test_a_known_network_is_rewritten_once_per_tenth_of_the_trust(
        database: Database, clock: Clock, monotonic: list[float]) -> None:
    """Trusted 1000 s: a repeat success 95 s later writes nothing, one 100 s later does."""
    guard = _throttle(database, clock, trusted_network_seconds=1000)
    guard.succeeded(credentials(ALICE, "pw", HOME))
    assert _known(database, ALICE, "192.0.2.1/32", T0)
    monotonic[0] += 95
    clock.advance(95)
    guard.succeeded(credentials(ALICE, "pw", HOME))
    assert not _known(database, ALICE, "192.0.2.1/32", T0 + dt.timedelta(seconds=1))
    monotonic[0] += 5
    clock.advance(5)
    guard.succeeded(credentials(ALICE, "pw", HOME))
    assert _known(database, ALICE, "192.0.2.1/32", T0 + dt.timedelta(seconds=100))
    # Another user, or another network of the same user, is its own write at once.
    guard.succeeded(credentials(BOB, "pw", ELSEWHERE))
    guard.succeeded(credentials(ALICE, "pw", ELSEWHERE))
    assert _known(database, BOB, "198.51.100.1/32", T0 + dt.timedelta(seconds=100))
    assert _known(database, ALICE, "198.51.100.1/32", T0 + dt.timedelta(seconds=100))


def test_a_full_memory_of_writes_is_forgotten_and_writes_again(
        database: Database, clock: Clock, monotonic: list[float],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory for 2 (user, network) pairs: the third clears it, so the first writes again."""
    monkeypatch.setattr(throttle_module, "_TOUCHED_MAX", 2)
    guard = _throttle(database, clock, trusted_network_seconds=1000)
    guard.succeeded(credentials(ALICE, "pw", HOME))
    guard.succeeded(credentials(BOB, "pw", HOME))
    clock.advance(10)
    guard.succeeded(credentials(CAROL, "pw", HOME))
    assert _known(database, CAROL, "192.0.2.1/32", T0 + dt.timedelta(seconds=10))
    clock.advance(10)
    guard.succeeded(credentials(ALICE, "pw", HOME))
    assert _known(database, ALICE, "192.0.2.1/32", T0 + dt.timedelta(seconds=20))


def test_a_network_that_could_not_be_recorded_is_logged_and_tried_again(
        database: Database, clock: Clock, monotonic: list[float],
        caplog: pytest.LogCaptureFixture) -> None:
    """A lost table: one warning naming network and user, no password; the next success
    (however soon) writes it."""
    guard = _throttle(database, clock, trusted_network_seconds=86400)
    _, reservation = guard.reserve(credentials(ALICE, "alices-secret", HOME))
    tables.known_clients.drop(database.primary)
    with caplog.at_level(logging.WARNING, logger="eximauthd.throttle"):
        guard.settle(reservation, succeeded=True, credentials=credentials(ALICE, "pw", HOME))
    assert _warnings(caplog) == [
        f"could not record 192.0.2.1/32 as a known network of {ALICE}: "
        f"record known network: {MISSING}"]
    assert "alices-secret" not in caplog.text
    assert reservation.tag not in caplog.text
    tables.known_clients.create(database.primary)
    monotonic[0] += 1
    guard.succeeded(credentials(ALICE, "pw", HOME))
    assert _known(database, ALICE, "192.0.2.1/32", T0)


class _SuccessDuringWrite:
    """The real known-network store; during the first write, *during* runs (as another
    thread's success would, the throttle's lock being free while a write is in flight)."""

    def __init__(self, store: KnownNetworkStore, during: Callable[[], None]) -> None:
        self.store = store
        self.during: Callable[[], None] | None = during

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def touch(self, address: str, network: str, now: dt.datetime) -> None:
        during, self.during = self.during, None
        if during is not None:
            during()
        self.store.touch(address, network, now)


def test_a_failed_write_survives_the_memory_being_cleared_meanwhile(
        database: Database, clock: Clock, monotonic: list[float],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Another success clears the full memory while a write fails: both only warn."""
    monkeypatch.setattr(throttle_module, "_TOUCHED_MAX", 1)
    guard = _throttle(database, clock, trusted_network_seconds=86400)
    guard.networks = _SuccessDuringWrite(  # type: ignore[assignment]
        guard.networks, lambda: guard.succeeded(credentials(BOB, "pw", ELSEWHERE)))
    tables.known_clients.drop(database.primary)
    with caplog.at_level(logging.WARNING, logger="eximauthd.throttle"):
        guard.succeeded(credentials(ALICE, "pw", HOME))
    assert _warnings(caplog) == [
        f"could not record 198.51.100.1/32 as a known network of {BOB}: "
        f"record known network: {MISSING}",
        f"could not record 192.0.2.1/32 as a known network of {ALICE}: "
        f"record known network: {MISSING}"]


def test_a_throttle_key_readable_by_others_is_reported_with_its_setting(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 0644 key file loads, with one warning naming it, the setting and the fix, not the key."""
    path = tmp_path / f"throttle-{secrets.token_hex(4)}.key"
    key = os.urandom(24).hex().encode()
    path.write_bytes(key + b"\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="eximauthd.files"):
        assert load_secret(str(path)) == key
    assert [r.getMessage() for r in caplog.records if r.name == "eximauthd.files"] == [
        f"{path} holds the throttle key (throttle.secret_file) and is readable by every "
        f"local user (mode 0644): chmod o-rwx {path}"]
    assert key.decode() not in caplog.text


@pytest.mark.parametrize(("rows", "expected"), [
    (["alice"], (("alice",),)),
    (["alice", "bob"], (("alice",), ("bob",))),
    ([], ()),
], ids=["one-row", "two-rows", "no-row"])
def test_the_reservation_carries_the_rows_read_with_the_counts(
        database: Database, clock: Clock, rows: list[str],
        expected: tuple[tuple[str], ...]) -> None:
    """The AUTH path reads the account with the counts (one statement): the rows of *also*
    come back in the reservation, exactly; without *also* there are none to give (None)."""
    guard = _throttle(database, clock)
    names = sa.union_all(*(sa.select(sa.literal(n).label("name")) for n in rows)) \
        if len(rows) > 1 else sa.select(sa.literal(rows[0]).label("name")) if rows \
        else sa.select(sa.literal("x").label("name")).where(sa.false())
    also = sa.select(names.subquery().c.name)
    refused, reservation = guard.reserve(credentials(ALICE, "pw", HOME),
                                         also=Lookup(also, lambda _address: {}))
    assert refused is None
    assert reservation.rows == expected
    refused, reservation = guard.reserve(credentials(ALICE, "pw2", HOME))
    assert refused is None
    assert reservation.rows is None


def _settled(guard: Throttle, user: str, ip: str) -> None:
    refused, reservation = guard.reserve(credentials(user, "right", ip))
    assert refused is None
    guard.settle(reservation, succeeded=True, credentials=credentials(user, "right", ip))


def test_a_success_far_from_the_limits_is_held_until_its_batch_is_flushed(
        database: Database, clock: Clock) -> None:
    """Under half of each limit, a success's rows wait for the batch (they count meanwhile,
    like a check still running); a flush takes every one of them back."""
    guard = _throttle(database, clock, max_failures_per_ip=10, max_failures_per_user=10,
                      release_delay_ms=3_600_000)
    for user in (ALICE, BOB):
        _settled(guard, user, "192.0.2.1")
    assert _counts(database) == {("ip", "192.0.2.1/32"): 2, ("user", ALICE): 1,
                                 ("user", BOB): 1}
    guard.flush()
    assert _counts(database) == {}


def test_a_success_near_a_limit_is_taken_back_at_once(database: Database,
                                                      clock: Clock) -> None:
    """Over half of a limit the rows held for a batch could refuse someone: the success
    that sees that count takes its own rows back at once."""
    guard = _throttle(database, clock, max_failures_per_ip=4, max_failures_per_user=10,
                      release_delay_ms=3_600_000)
    _settled(guard, ALICE, "192.0.2.1")  # ip count 1 of 4: held
    _settled(guard, BOB, "192.0.2.1")  # 2 of 4: held
    _settled(guard, "carol@example.test", "192.0.2.1")  # 3 of 4: at once
    assert _counts(database) == {("ip", "192.0.2.1/32"): 2, ("user", ALICE): 1,
                                 ("user", BOB): 1}
    # However many more log in from there, the held rows never refuse one of them.
    for i in range(10):
        _settled(guard, f"user{i}@example.test", "192.0.2.1")
    assert _counts(database)[("ip", "192.0.2.1/32")] == 2


def test_a_batch_is_taken_back_by_itself_soon(database: Database, clock: Clock) -> None:
    """Nobody flushes: the timer does, release_delay_ms after the first success held."""
    guard = _throttle(database, clock, release_delay_ms=20)
    _settled(guard, ALICE, "192.0.2.1")
    wait_for(lambda: not _counts(database), timeout=30)  # liveness on a loaded machine
    assert _counts(database) == {}


@pytest.mark.parametrize("delay_ms", [0, 3_600_000])
def test_without_a_delay_or_once_closed_a_success_is_taken_back_at_once(
        database: Database, clock: Clock, delay_ms: int) -> None:
    guard = _throttle(database, clock, release_delay_ms=delay_ms)
    _settled(guard, ALICE, "192.0.2.1")
    if delay_ms:
        assert _counts(database) != {}
        guard.close()  # flushes what it held
        assert _counts(database) == {}
    _settled(guard, BOB, "192.0.2.1")
    assert _counts(database) == {}


def test_the_user_limit_decides_whether_a_success_waits_for_its_batch(
        database: Database, clock: Clock) -> None:
    """Each subject against its own limit: far under the network's, over half the user's,
    the success is taken back at once (the user's two failures stay counted)."""
    guard = _throttle(database, clock, max_failures_per_ip=100, max_failures_per_user=4,
                      release_delay_ms=3_600_000)
    for guess in ("guess-1", "guess-2"):
        _, failed = guard.reserve(credentials(ALICE, guess, ELSEWHERE))
        guard.settle(failed, succeeded=False, credentials=credentials(ALICE, guess, ELSEWHERE))
    _settled(guard, ALICE, HOME)  # user count 3 of 4
    assert _counts(database) == {("ip", f"{ELSEWHERE}/32"): 2, ("user", ALICE): 2}


def test_a_success_taken_back_at_once_also_takes_back_its_earlier_failure(
        database: Database, clock: Clock) -> None:
    """Near the limit, the success deletes every row of its password (the failure of the
    same, then new, password included), not only the row it reserved itself."""
    guard = _throttle(database, clock, max_failures_per_ip=100, max_failures_per_user=1,
                      release_delay_ms=3_600_000)
    _, failed = guard.reserve(credentials(ALICE, "new-password", HOME))
    guard.settle(failed, succeeded=False, credentials=credentials(ALICE, "pw", HOME))
    _, right = guard.reserve(credentials(ALICE, "new-password", HOME))
    assert not right.batched
    guard.settle(right, succeeded=True, credentials=credentials(ALICE, "pw", HOME))
    assert _counts(database) == {}


def test_without_a_delay_the_release_runs_in_the_settling_thread(
        database: Database, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """release_delay_ms = 0: no timer thread; a failed release is reported by settle itself."""
    guard = _throttle(database, clock, release_delay_ms=0)
    _, reservation = guard.reserve(credentials(ALICE, "right", HOME))
    tables.auth_attempts.drop(database.primary)
    with caplog.at_level(logging.WARNING, logger="eximauthd.throttle"):
        guard.settle(reservation, succeeded=True, credentials=credentials(ALICE, "right", HOME))
        threads = {r.threadName for r in caplog.records if r.name == "eximauthd.throttle"}
    assert threads == {threading.current_thread().name}


def test_a_held_batch_does_not_keep_a_process_from_exiting(tmp_path: Path) -> None:
    """A program that settles a success and exits without close() is not held up by the
    batch's timer (an hour here): the timer thread is a daemon."""
    script = f"""
import datetime as dt
from eximauthd.auth.throttle import Throttle
from eximauthd.db import upgrade
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig, ThrottleConfig
from tests.support import credentials
db = Database(DatabaseConfig(url="sqlite:///{tmp_path}/t.sqlite3"))
upgrade.upgrade(db)
guard = Throttle(ThrottleConfig(release_delay_ms=3_600_000), db, b"k" * 32)
_, held = guard.reserve(credentials("alice@example.test", "right", "192.0.2.1"))
assert held.batched
guard.settle(held, succeeded=True, credentials=credentials("alice@example.test", "right",
                                                            "192.0.2.1"))
print("settled", flush=True)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2], check=False)
    assert (done.returncode, done.stdout) == (0, "settled\n"), done.stderr[-2000:]
