"""The positive AUTH cache (eximauthd.auth.cache): what it stores, and every way it forgets."""

from __future__ import annotations

import pytest

from eximauthd.auth.cache import AuthCache

USER = "alice@example.test"


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _put(cache: AuthCache, user: str = USER, password: str = "pw",  # noqa: S107
         ip: str | None = "192.0.2.1",
         stored: str = "$argon2id$h") -> None:
    cache.put(user, password, ip, stored, cache.generation(user))


def test_a_success_of_a_user_never_forgotten_is_cached() -> None:
    """With the generation taken as authn takes it, a first success is stored and hits."""
    cache = AuthCache(60, 10)
    _put(cache)
    assert cache.hit(USER, "pw", "192.0.2.1")
    assert len(cache) == 1


def test_a_success_of_a_user_forgotten_long_ago_is_cached() -> None:
    """A FORGET before the generation was taken does not stop the next put."""
    cache = AuthCache(60, 10)
    cache.forget(USER)
    cache.forget(USER)
    _put(cache)
    assert cache.hit(USER, "pw", "192.0.2.1")


def test_a_put_that_raced_two_forgets_is_not_stored() -> None:
    """A second FORGET while an AUTH is in flight still refuses that AUTH's put."""
    cache = AuthCache(60, 10)
    cache.forget(USER)
    taken = cache.generation(USER)
    cache.forget(USER)
    cache.put(USER, "old-pw", "", "old-hash", taken)
    assert not cache.hit(USER, "old-pw", "")
    assert len(cache) == 0


def test_a_forget_of_another_user_does_not_refuse_a_put() -> None:
    """Generations are per user: a FORGET of bob does not cost alice her cache entry."""
    cache = AuthCache(60, 10)
    taken = cache.generation(USER)
    cache.forget("bob@example.test")
    cache.put(USER, "pw", "", "h", taken)
    assert cache.hit(USER, "pw", "")


def test_the_generation_table_is_bounded_and_trimming_refuses_puts_in_flight() -> None:
    """Up to 4 x max_entries forgotten users are remembered; one more empties the table and
    refuses every put whose generation was taken before (it cannot be checked any more)."""
    cache = AuthCache(60, 1)
    taken = cache.generation(USER)
    for n in range(4):
        cache.forget(f"user{n}@example.test")
    cache.put(USER, "pw", "", "h", taken)      # 4 remembered: no trim, the put is stored
    assert cache.hit(USER, "pw", "")
    taken = cache.generation(USER)
    cache.forget("user4@example.test")         # the fifth: trimmed, a new epoch
    cache.put(USER, "pw2", "", "h", taken)
    assert not cache.hit(USER, "pw2", "")
    cache.put(USER, "pw2", "", "h", cache.generation(USER))
    assert cache.hit(USER, "pw2", "")


def test_a_trimmed_table_still_refuses_a_put_taken_before_a_forget_of_that_user() -> None:
    """After the trim, forgetting a user again still refuses that user's put in flight."""
    cache = AuthCache(60, 1)
    for n in range(5):
        cache.forget(f"user{n}@example.test")
    taken = cache.generation(USER)
    cache.forget(USER)
    cache.put(USER, "pw", "", "h", taken)
    assert not cache.hit(USER, "pw", "")


def test_forget_reports_how_many_entries_it_dropped() -> None:
    """FORGET answers with the count of entries dropped: 0 for a user not cached."""
    cache = AuthCache(60, 10)
    assert cache.forget(USER) == 0
    _put(cache, ip="192.0.2.1")
    _put(cache, ip="198.51.100.1")
    assert cache.forget(USER) == 2
    assert cache.forget(USER) == 0
    assert cache.users() == []
    assert len(cache) == 0


def test_values_with_surrogate_escapes_are_cached_and_kept_apart() -> None:
    """Invalid UTF-8 from the socket (surrogate-escaped) is hashed, never raises, never
    collides with another byte."""
    cache = AuthCache(60, 10)
    user, password, stored = "\udcffalice@example.test", "p\udc80w", "$argon2id$\udcfe"
    _put(cache, user=user, password=password, stored=stored)
    assert cache.hit(user, password, "192.0.2.1")
    assert not cache.hit(user, "p\udc81w", "192.0.2.1")
    assert not cache.hit("\udcfealice@example.test", password, "192.0.2.1")
    assert cache.revalidate([user], {user: (stored, True)}) == 0
    assert cache.revalidate([user], {user: ("$argon2id$\udcfd", True)}) == 1
    assert not cache.hit(user, password, "192.0.2.1")


def test_an_entry_expires_exactly_at_its_ttl_and_is_dropped() -> None:
    """An entry hits until ttl seconds after the put, not at ttl, and a miss removes it."""
    clock = Clock(100.0)
    cache = AuthCache(30, 10, clock=clock)
    _put(cache)
    clock.now = 129.999
    assert cache.hit(USER, "pw", "192.0.2.1")
    clock.now = 130.0
    assert not cache.hit(USER, "pw", "192.0.2.1")
    assert cache.users() == []
    assert len(cache) == 0


def test_a_new_put_restarts_the_ttl() -> None:
    """Logging in again stores the entry afresh, with a new expiry."""
    clock = Clock(0.0)
    cache = AuthCache(30, 10, clock=clock)
    _put(cache)
    clock.now = 20.0
    _put(cache)
    clock.now = 45.0
    assert cache.hit(USER, "pw", "192.0.2.1")
    assert len(cache) == 1


def test_a_hit_makes_an_entry_the_most_recently_used() -> None:
    """The entry evicted first is the least recently *used*, not the oldest stored."""
    cache = AuthCache(60, 2)
    _put(cache, user="a@x.test")
    _put(cache, user="b@x.test")
    assert cache.hit("a@x.test", "pw", "192.0.2.1")
    _put(cache, user="c@x.test")
    assert cache.hit("a@x.test", "pw", "192.0.2.1")
    assert not cache.hit("b@x.test", "pw", "192.0.2.1")
    assert sorted(cache.users()) == ["a@x.test", "c@x.test"]


def test_eviction_drops_the_user_from_revalidation() -> None:
    """A user whose only entry was evicted is no longer read back by revalidation."""
    cache = AuthCache(60, 1)
    _put(cache, user="a@x.test")
    _put(cache, user="b@x.test")
    assert cache.users() == ["b@x.test"]


def test_a_user_keeps_the_entries_the_revalidation_did_not_drop() -> None:
    """Revalidation checks every entry of a user and counts each one it drops."""
    cache = AuthCache(60, 10)
    _put(cache, ip="192.0.2.1", stored="h")
    _put(cache, ip="198.51.100.1", stored="h")
    _put(cache, user="bob@x.test", stored="h")
    assert cache.revalidate([USER], {USER: ("h", True)}) == 0
    assert cache.revalidate([USER, "bob@x.test"], {"bob@x.test": ("h", True)}) == 2
    assert cache.users() == ["bob@x.test"]
    assert cache.revalidate(["nobody@x.test"], {}) == 0


def test_clients_without_a_network_share_one_slot_per_user_and_password() -> None:
    """Local submissions (no client network) are cached under the empty network."""
    cache = AuthCache(60, 10)
    _put(cache, ip=None)
    assert cache.hit(USER, "pw", None)
    assert not cache.hit(USER, "pw", "192.0.2.1/32")


def test_settings_are_kept_and_shown() -> None:
    """The TTL and bound are what was asked for, and repr shows them, nothing else."""
    cache = AuthCache(45.5, 7)
    assert (cache.ttl, cache.max_entries) == (45.5, 7)
    _put(cache, password="secret-pw")
    assert repr(cache) == "AuthCache(ttl=45.5s, entries=1/7)"
    assert "secret" not in repr(cache)


@pytest.mark.parametrize("other", [("ab", "c"), ("a", "bc"), ("abc", "")])
def test_fields_never_run_into_each_other(other: tuple[str, str]) -> None:
    """User, password and network are length-prefixed: no two splits share a slot."""
    cache = AuthCache(60, 10)
    cache.put("", "abc", "", "h", cache.generation(""))
    assert cache.hit("", "abc", "")
    assert not cache.hit(other[0], other[1], "")


def test_a_repeated_success_makes_its_entry_the_most_recently_used() -> None:
    """Storing an entry again (a new login) moves it to the young end of the LRU."""
    cache = AuthCache(60, 2)
    _put(cache, user="a@x.test")
    _put(cache, user="b@x.test")
    _put(cache, user="a@x.test")
    _put(cache, user="c@x.test")
    assert cache.hit("a@x.test", "pw", "192.0.2.1")
    assert not cache.hit("b@x.test", "pw", "192.0.2.1")


def test_every_trim_of_the_generation_table_refuses_the_puts_in_flight() -> None:
    """Not only the first trim: a put taken before the second trim is refused as well."""
    cache = AuthCache(60, 1)
    for n in range(5):
        cache.forget(f"first{n}@example.test")   # first trim
    taken = cache.generation(USER)
    for n in range(5):
        cache.forget(f"second{n}@example.test")  # second trim
    cache.put(USER, "pw", "", "h", taken)
    assert not cache.hit(USER, "pw", "")
