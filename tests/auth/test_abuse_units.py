"""Abuse defenses without a running service: pure parts, the cache, and the shared counters."""

from __future__ import annotations

import datetime as dt

import pytest

from eximauthd.auth.cache import AuthCache
from eximauthd.auth.throttle import password_tag
from eximauthd.core.clients import read_client
from eximauthd.core.decision import Decision, Reason
from eximauthd.core.limits import Limit, parse_limit, parse_limits
from eximauthd.core.ratelimit import RateLimiter, estimate
from eximauthd.db.counters import (
    AttemptStore,
    KnownNetworkStore,
    LimitStore,
    RateStore,
    Reserved,
)
from eximauthd.db.engine import Database
from eximauthd.errors import ConfigError
from eximauthd.settings import DatabaseConfig, RateLimitConfig

from ..support import credentials

HOUR = 3600


class Clock:
    """A settable clock for the pure parts (never for the services: they run in real time)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_password_tag_is_equal_only_for_the_same_user_password_and_key() -> None:
    """A wrong password's tag differs by user, password and key and hides the password."""
    key = b"k" * 32
    tag = password_tag(key, "alice@example.test", "old-password")
    assert tag == password_tag(key, "alice@example.test", "old-password")
    assert len({tag, password_tag(key, "bob@example.test", "old-password"),
                password_tag(key, "alice@example.test", "old-passwore"),
                password_tag(b"j" * 32, "alice@example.test", "old-password")}) == 4
    assert "old-password" not in tag


@pytest.mark.parametrize(("spec", "limit"), [
    ("100/1h", Limit(3600, 100)), ("5/m", Limit(60, 5)), ("2000/1d", Limit(86400, 2000)),
    (" 7/30s ", Limit(30, 7)), ("1/7d", Limit(7 * 86400, 1)),
])
def test_limits_parse_count_and_window(spec: str, limit: Limit) -> None:
    """A limit COUNT/WINDOW is read in seconds, minutes, hours or days, spaces around ignored."""
    assert parse_limit(spec) == limit


@pytest.mark.parametrize("spec", ["", "100", "100/", "100/1w", "0/1h", "-1/1h", "1/8d", "1/0s",
                                  "a/1h", "100/1h/2", "\u0661\u0660/1h", "10/\u0661h"])
def test_bad_limits_are_refused_with_the_expected_form(spec: str) -> None:
    """A malformed, zero, over-7-day or non-ASCII-digit limit is refused with a config error."""
    with pytest.raises(ConfigError, match=r"COUNT/WINDOW|window|count"):
        parse_limit(spec)


def test_two_limits_for_one_window_are_refused() -> None:
    """Two limits for the same window (10/1h and 20/60m) are refused as a config error."""
    with pytest.raises(ConfigError, match="same window"):
        parse_limits(["10/1h", "20/60m"])


def test_sliding_estimate_weighs_the_previous_bucket_by_what_is_left_of_it() -> None:
    """The sliding count adds the previous bucket by the part still inside the window."""
    assert estimate(100, 0, 0.0, 3600) == 100
    assert estimate(100, 10, 900.0, 3600) == 85
    assert estimate(100, 10, 3599.999, 3600) == pytest.approx(10, abs=0.01)


def _limiter(clock: Clock, **settings: object) -> RateLimiter:
    config = RateLimitConfig(**{"recipients": ("3/1h",), "messages": ("2/1h",)} | settings)
    return RateLimiter(config, clock=clock, monotonic=clock)  # type: ignore[arg-type]


class TestRateLimiter:
    def test_recipients_over_the_limit_are_deferred_with_kind_and_window(self) -> None:
        """A recipient over the limit is deferred naming kind and window; others unaffected."""
        limiter = _limiter(Clock())
        assert [limiter.admit("a@x.test") for _ in range(3)] == [None] * 3
        assert limiter.admit("a@x.test") == Decision.defer(Reason.RATE_LIMIT, "recipients-1h")
        assert limiter.admit("b@x.test") is None  # per user

    def test_a_message_counts_once_per_transaction(self) -> None:
        """A transaction counts one message; its further recipients, or no id, still pass."""
        limiter = _limiter(Clock(), recipients=("100/1h",))
        for txn in ("t1", "t2"):
            assert [limiter.admit("a@x.test", txn) for _ in range(5)] == [None] * 5
        assert limiter.admit("a@x.test", "t3") == Decision.defer(Reason.RATE_LIMIT, "messages-1h")
        assert limiter.admit("a@x.test", "t2") is None  # more recipients of a counted message
        assert limiter.admit("a@x.test") is None  # no transaction id: recipients only

    def test_the_window_slides_on(self) -> None:
        """Old recipients fade out as the window slides: the user sends again unaided."""
        clock = Clock(1_800_000_000 - 1_800_000_000 % HOUR)  # the start of a bucket
        limiter = _limiter(clock)
        for _ in range(3):
            assert limiter.admit("a@x.test") is None
        clock.now += HOUR + HOUR / 2  # half of the previous bucket still in the window
        limiter.synced(limiter.take(), {}, {})  # nothing written elsewhere
        assert limiter.admit("a@x.test") is None  # 3 * 0.5 + 1 <= 3
        clock.now += HOUR
        limiter.synced(limiter.take(), {}, {})
        assert [limiter.admit("a@x.test") for _ in range(2)] == [None, None]

    def test_counts_read_back_from_other_instances_count(self) -> None:
        """Recipients counted by other instances and read back at sync bring a user to his limit."""
        clock = Clock()
        limiter = _limiter(clock)
        batch = limiter.take()
        bucket = int(clock.now // HOUR)
        limiter.synced(batch, {("a@x.test", "recipients", HOUR, bucket): 3}, {})
        assert limiter.admit("a@x.test") == Decision.defer(Reason.RATE_LIMIT, "recipients-1h")

    def test_a_failed_sync_keeps_its_counts_and_turns_stale(self) -> None:
        """A failed sync keeps its counts; past the staleness limit every relay defers."""
        clock = Clock()
        limiter = _limiter(clock, max_staleness_seconds=30)
        limiter.admit("a@x.test")
        batch = limiter.take()
        limiter.failed(batch)
        assert limiter.take().deltas == batch.deltas
        clock.now += 31
        assert limiter.admit("b@x.test") == Decision.defer("ratelimit-unavailable")

    def test_a_pause_longer_than_the_read_back_window_gives_no_fresh_quota(self) -> None:
        """Totals of users not read back lately are kept, not dropped (review finding)."""
        clock = Clock(1_800_000_000 - 1_800_000_000 % HOUR)
        limiter = _limiter(clock)
        table: dict[tuple[str, str, int, int], int] = {}

        def sync() -> None:  # what RateStore.add_and_read does, on a dict
            batch = limiter.take()
            for key, n in batch.deltas.items():
                table[key] = table.get(key, 0) + n
            limiter.synced(batch, {k: n for k, n in table.items() if k[0] in batch.addresses},
                           {})

        assert [limiter.admit("a@x.test") for _ in range(3)] == [None] * 3
        sync()
        for _ in range(12):  # 12 minutes without a word from this user
            clock.now += 60
            sync()
        assert limiter.admit("a@x.test") == Decision.defer(Reason.RATE_LIMIT, "recipients-1h")

    def test_a_reset_read_back_lowers_the_totals(self) -> None:
        """After `throttle reset` a sync reads back no rows and the user may send again."""
        clock = Clock()
        limiter = _limiter(clock)
        assert [limiter.admit("a@x.test") for _ in range(3)] == [None] * 3
        limiter.synced(limiter.take(), {}, {})  # the rows were deleted by `throttle reset`
        assert limiter.admit("a@x.test") is None

    def test_user_overrides_replace_the_defaults_of_their_kind(self) -> None:
        """A per-user limit replaces the default of its kind; an empty one is unlimited."""
        limiter = _limiter(Clock())
        limiter.synced(limiter.take(), {}, {"a@x.test": {"recipients": (Limit(HOUR, 1),)},
                                            "b@x.test": {"recipients": ()}})
        assert limiter.admit("a@x.test") is None
        assert limiter.admit("a@x.test") == Decision.defer(Reason.RATE_LIMIT, "recipients-1h")
        assert all(limiter.admit("b@x.test") is None for _ in range(50))  # unlimited

    def test_the_first_trip_of_a_window_is_logged_once(self,
                                                       caplog: pytest.LogCaptureFixture) -> None:
        """Reaching a limit logs one warning naming the user, not one per deferral."""
        limiter = _limiter(Clock(), recipients=("1/1h",))
        with caplog.at_level("WARNING", logger="eximauthd.ratelimit"):
            for _ in range(5):
                limiter.admit("a@x.test")
        trips = [r for r in caplog.records if "rate limit reached" in r.getMessage()]
        assert len(trips) == 1
        assert "a@x.test" in trips[0].getMessage()


class TestAuthCache:
    def test_hit_only_for_the_same_user_password_and_network(self) -> None:
        """A cached login matches only the same user, exact password and network (an IPv6 /64)."""
        def network(ip: str) -> str | None:
            return read_client(ip, 32, 64).network

        cache = AuthCache(60, 10)
        cache.put("a@x.test", "pw", network("2001:db8::1"), "$argon2id$one", (0, 0))
        assert cache.hit("a@x.test", "pw", network("2001:db8::2"))  # the same /64
        assert not cache.hit("a@x.test", "pW", network("2001:db8::1"))
        assert not cache.hit("b@x.test", "pw", network("2001:db8::1"))
        assert not cache.hit("a@x.test", "pw", network("2001:db8:0:1::1"))  # another network

    def test_entries_expire(self) -> None:
        """A cached login is used until its TTL ends, then no longer, and the entry is dropped."""
        clock = Clock(0)
        cache = AuthCache(60, 10, clock=clock)
        cache.put("a@x.test", "pw", "192.0.2.1", "h", (0, 0))
        clock.now = 59
        assert cache.hit("a@x.test", "pw", "192.0.2.1")
        clock.now = 60
        assert not cache.hit("a@x.test", "pw", "192.0.2.1")
        assert len(cache) == 0

    def test_size_is_bounded_least_recently_used_first(self) -> None:
        """A full cache drops its least recently used login to make room for a new one."""
        cache = AuthCache(60, 2)
        for user in ("a", "b", "c"):
            cache.put(user, "pw", "", "h", (0, 0))
        assert len(cache) == 2
        assert not cache.hit("a", "pw", "")
        assert cache.hit("c", "pw", "")
        assert cache.users() == ["b", "c"]

    def test_forget_drops_every_entry_of_a_user(self) -> None:
        """Forgetting a user drops all his cached logins, from every network, and nobody else's."""
        cache = AuthCache(60, 10)
        for ip in ("192.0.2.1", "192.0.2.2"):
            cache.put("a@x.test", "pw", ip, "h", (0, 0))
        cache.put("b@x.test", "pw", "192.0.2.1", "h", (0, 0))
        assert cache.forget("a@x.test") == 2
        assert not cache.hit("a@x.test", "pw", "192.0.2.1")
        assert cache.hit("b@x.test", "pw", "192.0.2.1")

    @pytest.mark.parametrize(("now", "kept"), [
        (("h", True), True),           # unchanged
        (("h2", True), False),         # another password (passwd, a panel, another host)
        (("h", False), False),         # disabled
        ((None, True), False),         # password removed
        (None, False),                 # account gone or ambiguous
    ])
    def test_revalidation_keeps_only_unchanged_enabled_accounts(
            self, now: tuple[str | None, bool] | None, kept: bool) -> None:
        """Revalidation keeps a cached login only while its account exists, enabled, same hash."""
        cache = AuthCache(60, 10)
        cache.put("a@x.test", "pw", "", "h", (0, 0))
        current = {} if now is None else {"a@x.test": now}
        assert cache.revalidate(["a@x.test"], current) == (0 if kept else 1)
        assert cache.hit("a@x.test", "pw", "") is kept

    def test_a_put_that_read_before_a_forget_is_not_stored(self) -> None:
        """AUTH read the old row, `user passwd` committed and sent FORGET, then AUTH's put
        arrives: the old password must not be cached again (review finding)."""
        cache = AuthCache(60, 10)
        taken = cache.generation("a@x.test")
        cache.forget("a@x.test")
        cache.put("a@x.test", "old-pw", "", "old-hash", taken)
        assert not cache.hit("a@x.test", "old-pw", "")
        cache.put("a@x.test", "new-pw", "", "new-hash", cache.generation("a@x.test"))
        assert cache.hit("a@x.test", "new-pw", "")

    def test_length_prefix_keeps_fields_apart(self) -> None:
        """User "ab" with password "c" is no cached login for user "a" with password "bc"."""
        cache = AuthCache(60, 10)
        cache.put("ab", "c", "", "h", (0, 0))
        assert not cache.hit("a", "bc", "")

    def test_repr_shows_no_key_or_entry(self) -> None:
        """The cache's repr shows its TTL and size only, never a user, password or hash."""
        cache = AuthCache(60, 10)
        cache.put("a@x.test", "secret-pw", "", "$argon2id$hash", (0, 0))
        assert repr(cache) == "AuthCache(ttl=60s, entries=1/10)"


# --- the shared tables, on both backends ---------------------------------------------------

T0 = dt.datetime(2026, 11, 28, 12, 0, 0)
WINDOW = dt.timedelta(minutes=15)


def _second_instance(database: Database) -> Database:
    """Another process's view of the same database: its own engine and connections."""
    return Database(DatabaseConfig(url=database.config.url))


class TestAttemptStore:
    def test_the_same_wrong_password_counts_once(self, database: Database) -> None:
        """A repeated password shares its row: five repeats and one other count two."""
        store = AttemptStore(database)
        subjects = [("ip", "192.0.2.1/32"), ("user", "a@x.test")]
        for i in range(5):
            store.reserve(subjects, "tag-old-password", f"n{i}", T0, T0 - WINDOW)
        got = store.reserve(subjects, "tag-other", "n9", T0, T0 - WINDOW)
        assert got == dict.fromkeys(subjects, Reserved(2, mine=True))

    def test_two_passwords_alternating_count_two(self, database: Database) -> None:
        """Two devices behind one NAT retrying two stale passwords count two, not one per try."""
        store = AttemptStore(database)
        subject = [("ip", "192.0.2.1/32")]
        for i in range(6):
            got = store.reserve(subject, "tag-a" if i % 2 else "tag-b", f"n{i}", T0,
                                T0 - WINDOW)
        assert got[subject[0]].count == 2
        assert [r.failures for r in store.list(T0 - WINDOW)] == [2]

    def test_a_repeat_is_not_mine_to_take_back(self, database: Database) -> None:
        """Only the request that added a row may release it as its own."""
        store = AttemptStore(database)
        subject = [("user", "a@x.test")]
        assert store.reserve(subject, "t", "first", T0, T0 - WINDOW)[subject[0]].mine
        assert not store.reserve(subject, "t", "second", T0, T0 - WINDOW)[subject[0]].mine
        store.release(subject, "t", "second")
        assert [r.failures for r in store.list(T0 - WINDOW)] == [1]
        store.release(subject, "t", "first")
        assert store.list(T0 - WINDOW) == []

    def test_a_row_from_an_earlier_window_is_renewed_as_new(self, database: Database) -> None:
        """Rows slide out of the window; the same password later counts again, as mine."""
        store = AttemptStore(database)
        subject = [("user", "a@x.test")]
        for i in range(4):
            store.reserve(subject, f"t{i}", "n", T0, T0 - WINDOW)
        later = T0 + WINDOW + dt.timedelta(seconds=1)
        assert store.list(later - WINDOW) == []
        got = store.reserve(subject, "t0", "later", later, later - WINDOW)
        assert got == {subject[0]: Reserved(1, mine=True)}

    def test_instances_add_to_one_count(self, database: Database) -> None:
        """Two engines (two instances) on one database see each other's rows."""
        other = _second_instance(database)
        try:
            subject = [("ip", "2001:db8::/64")]
            AttemptStore(database).reserve(subject, "a", "n1", T0, T0 - WINDOW)
            got = AttemptStore(other).reserve(subject, "b", "n2", T0, T0 - WINDOW)
            assert got[subject[0]].count == 2
        finally:
            other.dispose()

    def test_reset_forgets_one_subject_only(self, database: Database) -> None:
        """Resetting one user leaves the others' rows alone."""
        store = AttemptStore(database)
        store.reserve([("user", "a@x.test"), ("user", "b@x.test")], "t", "n", T0, T0 - WINDOW)
        assert store.reset("user", "a@x.test") == 1
        assert [r.subject for r in store.list(T0 - WINDOW)] == ["b@x.test"]


def test_rate_counts_of_two_instances_add_up(database: Database) -> None:
    """Two instances' counts for one user and bucket add up; a bucket past use is pruned."""
    other = _second_instance(database)
    try:
        key = ("a@x.test", "recipients", HOUR, 500_000)
        now = 500_000 * HOUR + 10
        RateStore(database).add_and_read({key: 2}, ["a@x.test"], now)
        seen = RateStore(other).add_and_read({key: 3}, ["a@x.test"], now)
        assert seen == {key: 5}
        assert RateStore(database).add_and_read({}, ["a@x.test"], now) == {key: 5}
        assert RateStore(database).prune((500_000 + 2) * HOUR) == 1
    finally:
        other.dispose()


def test_user_limits_replace_clear_and_mean_unlimited(database: Database) -> None:
    """Per-user limits are stored; an empty set stays (unlimited), None clears to default."""
    store = LimitStore(database)
    store.set("a@x.test", "recipients", (Limit(60, 5), Limit(86400, 50)))
    store.set("a@x.test", "messages", ())
    store.set("b@x.test", "messages", (Limit(3600, 1),))
    store.set("b@x.test", "messages", None)
    assert store.all() == {"a@x.test": {"recipients": (Limit(60, 5), Limit(86400, 50)),
                                        "messages": ()}}


def test_throttle_prunes_windows_that_are_over_and_networks_too_old(
        database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both tables would otherwise only grow: an old counter and an old network go."""
    from eximauthd.auth import throttle as throttle_module  # noqa: PLC0415
    from eximauthd.settings import ThrottleConfig  # noqa: PLC0415

    monkeypatch.setattr(throttle_module, "_PRUNE_EVERY", 2)
    now = [T0]
    guard = throttle_module.Throttle(
        ThrottleConfig(window_seconds=900, trusted_network_seconds=3600), database,
        b"k" * 32, clock=lambda: now[0])
    guard.succeeded(credentials("alice@example.test", "pw", "192.0.2.1"))
    guard.reserve(credentials("bob@example.test", "guess", "198.51.100.1"))
    assert KnownNetworkStore(database).is_known("alice@example.test", "192.0.2.1/32",
                                                T0 - dt.timedelta(hours=1))
    now[0] = T0 + dt.timedelta(hours=2)
    guard.reserve(credentials("carol@example.test", "guess", "198.51.100.2"))  # prunes
    subjects = {r.subject for r in AttemptStore(database).list(T0 - dt.timedelta(days=1))}
    assert subjects == {"198.51.100.2/32", "carol@example.test"}
    assert not KnownNetworkStore(database).is_known("alice@example.test", "192.0.2.1/32",
                                                    T0 - dt.timedelta(days=1))
