"""Per-user outbound limits on RELAY (eximauthd.core.ratelimit): each edge decides the reply."""

from __future__ import annotations

import logging

import pytest

from eximauthd.core import ratelimit
from eximauthd.core.decision import Decision, Reason
from eximauthd.core.limits import Limit
from eximauthd.core.ratelimit import RateLimiter, estimate
from eximauthd.settings import RateLimitConfig

HOUR = 3600
DAY = 86400
START = 1_800_000_000 - 1_800_000_000 % DAY  # the start of a day bucket (and an hour bucket)
USER = "a@x.test"


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _limiter(clock: Clock, **settings: object) -> RateLimiter:
    config = RateLimitConfig(**{"recipients": ("3/1h",), "messages": ("2/1h",)} | settings)
    return RateLimiter(config, clock=clock, monotonic=clock)  # type: ignore[arg-type]


def _sync(limiter: RateLimiter, table: dict[tuple[str, str, int, int], int]) -> None:
    """What a successful sync does (RateStore.add_and_read), on a dict for the table."""
    batch = limiter.take()
    for key, n in batch.deltas.items():
        table[key] = table.get(key, 0) + n
    limiter.synced(batch, {k: n for k, n in table.items() if k[0] in batch.addresses}, {})


def test_exactly_the_limit_is_admitted_and_one_more_deferred() -> None:
    """With 3/1h the third recipient is accepted, the fourth gets ``defer``."""
    limiter = _limiter(Clock())
    assert [limiter.admit(USER) for _ in range(3)] == [None, None, None]
    assert limiter.admit(USER) == Decision.defer(Reason.RATE_LIMIT, "recipients-1h")
    assert limiter.take().deltas == {(USER, "recipients", HOUR, START // HOUR): 3}


def test_a_deferred_recipient_is_not_counted() -> None:
    """Deferrals add nothing: the count stays at the limit however often the client retries."""
    limiter = _limiter(Clock())
    for _ in range(10):
        limiter.admit(USER)
    assert limiter.take().deltas == {(USER, "recipients", HOUR, START // HOUR): 3}


def test_every_window_applies_and_a_refusal_by_one_counts_in_none() -> None:
    """A longer window trips on its own; the recipient it refuses is not counted in the
    shorter window either."""
    clock = Clock()
    limiter = _limiter(clock, recipients=("2/1m", "3/1d"))
    assert [limiter.admit(USER) for _ in range(2)] == [None, None]
    clock.now += 120
    _sync(limiter, {})
    assert limiter.admit(USER) is None
    assert limiter.admit(USER) == Decision.defer(Reason.RATE_LIMIT, "recipients-1d")
    assert limiter.take().deltas == {(USER, "recipients", 60, START // 60 + 2): 1,
                                     (USER, "recipients", DAY, START // DAY): 1}


def test_a_message_counts_on_its_first_recipient_only() -> None:
    """Messages are counted once per transaction id; recipients are counted every time."""
    limiter = _limiter(Clock(), recipients=("100/1h",), messages=("1/1h",))
    assert limiter.admit(USER, "t1") is None
    assert limiter.admit(USER, "t1") is None
    assert limiter.admit(USER, "t2") == Decision.defer(Reason.RATE_LIMIT, "messages-1h")
    deltas = limiter.take().deltas
    assert deltas[(USER, "messages", HOUR, START // HOUR)] == 1
    assert deltas[(USER, "recipients", HOUR, START // HOUR)] == 2


def test_a_transaction_id_is_per_user() -> None:
    """Two users' transactions with one id are two messages."""
    limiter = _limiter(Clock(), recipients=("100/1h",), messages=("1/1h",))
    assert limiter.admit(USER, "t1") is None
    assert limiter.admit("b@x.test", "t1") is None
    assert limiter.admit("b@x.test", "t2") == Decision.defer(Reason.RATE_LIMIT, "messages-1h")


def test_a_deferred_message_is_counted_when_it_is_retried_and_admitted() -> None:
    """A message deferred for its recipients is not remembered as counted."""
    clock = Clock()
    limiter = _limiter(clock, recipients=("1/1h",), messages=("5/1h",))
    assert limiter.admit(USER, "t1") is None
    assert limiter.admit(USER, "t2") == Decision.defer(Reason.RATE_LIMIT, "recipients-1h")
    clock.now += 2 * HOUR
    limiter.synced(limiter.take(), {}, {})
    assert limiter.admit(USER, "t2") is None
    assert limiter.take().deltas[(USER, "messages", HOUR, START // HOUR + 2)] == 1


def test_remembered_transactions_are_bounded_oldest_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past _SEEN_MAX transactions the oldest is forgotten (and would count again)."""
    monkeypatch.setattr(ratelimit, "_SEEN_MAX", 2)
    limiter = _limiter(Clock(), recipients=("100/1h",), messages=("100/1h",))
    key = (USER, "messages", HOUR, START // HOUR)
    for txn in ("t1", "t2", "t3"):
        limiter.admit(USER, txn)
    assert limiter.take().deltas[key] == 3
    limiter.admit(USER, "t3")  # the newest, remembered: not counted again
    limiter.admit(USER, "t2")  # remembered
    assert key not in limiter.take().deltas
    limiter.admit(USER, "t1")  # the oldest, forgotten: counted again
    assert limiter.take().deltas[key] == 1


def test_counts_are_trusted_up_to_max_staleness_and_not_a_moment_longer() -> None:
    """At exactly max_staleness_seconds since the last sync RELAY is decided; past it,
    ``defer ratelimit-unavailable``."""
    clock = Clock()
    limiter = _limiter(clock, max_staleness_seconds=30)
    clock.now += 30
    assert limiter.staleness == 30
    assert limiter.admit(USER) is None
    clock.now += 0.001
    assert limiter.admit(USER) == Decision.defer("ratelimit-unavailable")
    limiter.synced(limiter.take(), {}, {})
    assert limiter.staleness == 0
    assert limiter.admit(USER) is None


def test_users_seen_within_ten_minutes_are_read_back() -> None:
    """A sync reads back the users who asked in the last 600 s, deferred ones included."""
    clock = Clock()
    limiter = _limiter(clock, recipients=("1/1h",), max_staleness_seconds=10_000)
    limiter.admit(USER)
    limiter.admit(USER)  # deferred, still active
    clock.now += 300
    limiter.admit("b@x.test")
    clock.now += 300
    assert limiter.take().addresses == {USER, "b@x.test"}  # exactly 600 s: still active
    clock.now += 0.5
    batch = limiter.take()
    assert batch.addresses == {"b@x.test"}
    assert batch.now == int(clock.now)
    assert batch.deltas == {}


def test_the_previous_bucket_weighs_by_what_is_left_of_it() -> None:
    """The sliding estimate: all of the previous bucket at its start, none at its end."""
    assert estimate(100, 7, 0.0, HOUR) == 107
    assert estimate(100, 7, HOUR / 4, HOUR) == 82
    assert estimate(100, 7, HOUR * 0.75, HOUR) == 32
    assert estimate(0, 7, 123.0, HOUR) == 7


def test_counts_of_the_previous_bucket_still_defer() -> None:
    """Just after a bucket edge the previous bucket's count keeps a burst from passing twice."""
    clock = Clock(START + HOUR - 1)
    limiter = _limiter(clock)
    assert [limiter.admit(USER) for _ in range(3)] == [None] * 3
    clock.now += 2  # one second into the next bucket
    _sync(limiter, {})
    assert limiter.admit(USER) == Decision.defer(Reason.RATE_LIMIT, "recipients-1h")


def test_totals_of_users_not_read_back_are_kept_until_their_buckets_expire() -> None:
    """A user read back earlier keeps his totals, for two windows, when later syncs skip him."""
    clock = Clock()
    limiter = _limiter(clock)
    bucket = START // HOUR
    key = (USER, "recipients", HOUR, bucket)
    limiter.synced(limiter.take(), {key: 3}, {})  # read from the database
    clock.now += 11 * 60
    limiter.synced(limiter.take(), {}, {})         # USER not active: not read back
    assert limiter.admit(USER) == Decision.defer(Reason.RATE_LIMIT, "recipients-1h")
    clock.now = START + HOUR + 60                # the previous bucket, still weighing
    limiter.synced(limiter.take(), {}, {})
    assert limiter.admit(USER) == Decision.defer(Reason.RATE_LIMIT, "recipients-1h")
    clock.now = START + 2 * HOUR + 60            # both windows over: dropped
    limiter.synced(limiter.take(), {}, {})
    assert limiter.admit(USER) is None


def test_a_second_trip_in_a_later_window_is_logged_again(
        caplog: pytest.LogCaptureFixture) -> None:
    """The warning appears once per user, kind and window bucket, and again in a new one."""
    clock = Clock()
    limiter = _limiter(clock, recipients=("1/1h",))
    with caplog.at_level(logging.WARNING, "eximauthd.ratelimit"):
        for _ in range(3):
            limiter.admit(USER)
        clock.now += 3 * HOUR
        limiter.synced(limiter.take(), {}, {})
        for _ in range(3):
            limiter.admit(USER)
    trips = [r.getMessage() for r in caplog.records if "rate limit reached" in r.getMessage()]
    assert len(trips) == 2
    assert trips[0] == (
        "rate limit reached: a@x.test has used its 1 recipients per 1h; further recipients "
        "are deferred until the window moves on. A compromised account is the usual cause: "
        "check it, `eximauthd user disable a@x.test` if in doubt")


def test_overrides_read_back_apply_per_kind_and_defaults_stay() -> None:
    """A user's override of recipients leaves his messages limit at the default."""
    limiter = _limiter(Clock(), recipients=("100/1h",), messages=("1/1h",))
    limiter.synced(limiter.take(), {}, {USER: {"recipients": (Limit(HOUR, 50),)}})
    assert limiter.limits(USER, "recipients") == (Limit(HOUR, 50),)
    assert limiter.limits(USER, "messages") == (Limit(HOUR, 1),)
    assert limiter.limits("b@x.test", "recipients") == (Limit(HOUR, 100),)


def test_repr_shows_the_default_limits() -> None:
    """repr names the configured limits as an admin writes them."""
    limiter = _limiter(Clock(), recipients=("3/1h", "10/1d"))
    assert repr(limiter) == "RateLimiter(recipients=['3/1h', '10/1d'], messages=['2/1h'])"


def test_a_trip_is_logged_once_per_window_across_syncs(
        caplog: pytest.LogCaptureFixture) -> None:
    """Syncs within the window do not forget that the trip was logged."""
    clock = Clock()
    limiter = _limiter(clock, recipients=("1/1h",))
    with caplog.at_level(logging.WARNING, "eximauthd.ratelimit"):
        for _ in range(3):
            limiter.admit(USER)
            clock.now += 60
            _sync(limiter, {})
    assert sum("rate limit reached" in r.getMessage() for r in caplog.records) == 1


def test_tripped_windows_and_expired_totals_are_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    """Memory is bounded: totals are dropped two windows after their bucket began, and the
    log-once record of a trip two longest windows after its bucket ended (not before)."""
    clock = Clock()
    limiter = _limiter(clock, recipients=("1/1h",))
    bucket = START // HOUR
    limiter.synced(limiter.take(), {("b@x.test", "recipients", HOUR, bucket): 1}, {})
    limiter.admit(USER)
    limiter.admit(USER)  # tripped
    clock.now = START + 2 * HOUR - 1
    limiter.synced(limiter.take(), {}, {})
    assert ("b@x.test", "recipients", HOUR, bucket) in limiter._shared
    assert limiter._tripped
    clock.now = START + 2 * HOUR
    limiter.synced(limiter.take(), {}, {})
    assert limiter._shared == {}
    assert limiter._tripped  # its bucket ended at +1h: kept until +3h
    clock.now = START + 3 * HOUR
    limiter.synced(limiter.take(), {}, {})
    assert limiter._tripped == set()


def test_a_reset_read_back_replaces_totals_read_before() -> None:
    """`throttle reset` deletes the rows: the next read back of an active user lowers his
    totals, although they were read from the database before."""
    clock = Clock()
    limiter = _limiter(clock)
    key = (USER, "recipients", HOUR, START // HOUR)
    limiter.admit(USER)
    limiter.synced(limiter.take(), {key: 3}, {})
    assert limiter.admit(USER) == Decision.defer(Reason.RATE_LIMIT, "recipients-1h")
    limiter.synced(limiter.take(), {}, {})  # USER active, read back: no rows any more
    assert limiter.admit(USER) is None


def test_no_limit_configured_admits_everything_and_syncs() -> None:
    """Without any limit every RELAY is admitted and a sync has nothing to prune."""
    limiter = _limiter(Clock(), recipients=(), messages=())
    assert all(limiter.admit(USER, f"t{n}") is None for n in range(100))
    limiter.synced(limiter.take(), {}, {})
    assert limiter.take().deltas == {}


def test_a_failed_sync_adds_its_counts_to_those_admitted_meanwhile() -> None:
    """Counts admitted while a sync was failing are kept along with the failed batch's."""
    limiter = _limiter(Clock(), recipients=("100/1h",))
    limiter.admit(USER)
    batch = limiter.take()
    limiter.admit(USER)
    limiter.failed(batch)
    assert limiter.take().deltas == {(USER, "recipients", HOUR, START // HOUR): 2}
