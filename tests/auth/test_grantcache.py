"""The grant cache (eximauthd.auth.grantcache): what it keeps, for how long, and every way it
forgets."""

from __future__ import annotations

import pytest

from eximauthd.auth.grantcache import GrantCache

from ..support import Clock

ALICE = "alice@example.test"
GRANTS = ("@partner.test", "sales@example.org")


def test_grants_put_are_remembered_until_the_ttl_ends() -> None:
    clock = Clock()
    cache = GrantCache(10, clock=clock)
    cache.put(ALICE, GRANTS, cache.generation())
    assert cache.get(ALICE) == GRANTS
    clock.now += 9.999
    assert cache.get(ALICE) == GRANTS
    clock.now += 0.001
    assert cache.get(ALICE) is None
    assert repr(cache) == "GrantCache(ttl=10, entries=0)"  # an expired entry is dropped


def test_no_grants_is_remembered_as_an_empty_tuple_not_as_unknown() -> None:
    cache = GrantCache(10, clock=Clock())
    cache.put(ALICE, (), cache.generation())
    assert cache.get(ALICE) == ()


def test_another_login_is_unknown() -> None:
    cache = GrantCache(10, clock=Clock())
    cache.put(ALICE, GRANTS, cache.generation())
    assert cache.get("bob@example.test") is None
    assert cache.get("Alice@example.test") is None  # keys are canonical addresses, as given


@pytest.mark.parametrize("ttl", [0, -1])
def test_a_ttl_of_zero_remembers_nothing(ttl: float) -> None:
    cache = GrantCache(ttl, clock=Clock())
    cache.put(ALICE, GRANTS, cache.generation())
    assert repr(cache).endswith("entries=0)")  # not even an entry that expires at once
    assert cache.get(ALICE) is None


def test_the_shortest_ttl_the_configuration_allows_remembers() -> None:
    """policy.grant_cache_seconds = 1."""
    clock = Clock()
    cache = GrantCache(1, clock=clock)
    cache.put(ALICE, GRANTS, cache.generation())
    clock.now += 0.5
    assert cache.get(ALICE) == GRANTS


def test_forget_drops_the_login_at_once() -> None:
    cache = GrantCache(10, clock=Clock())
    cache.put(ALICE, GRANTS, cache.generation())
    cache.put("bob@example.test", (), cache.generation())
    cache.forget(ALICE)
    assert cache.get(ALICE) is None
    assert cache.get("bob@example.test") == ()


def test_a_lookup_begun_between_two_forgets_does_not_store_what_it_read() -> None:
    """Every FORGET ends the lookups under way, not only the first one."""
    cache = GrantCache(10, clock=Clock())
    cache.forget(ALICE)
    generation = cache.generation()
    cache.forget(ALICE)
    cache.put(ALICE, GRANTS, generation)
    assert cache.get(ALICE) is None


def test_a_lookup_begun_before_a_forget_does_not_store_what_it_read() -> None:
    """The race FORGET must win: a worker read the old grants, then `grant remove` came."""
    cache = GrantCache(10, clock=Clock())
    generation = cache.generation()
    cache.forget(ALICE)
    cache.put(ALICE, GRANTS, generation)
    assert cache.get(ALICE) is None
    cache.put(ALICE, GRANTS, cache.generation())  # a lookup begun after it is stored
    assert cache.get(ALICE) == GRANTS


def test_a_new_put_replaces_the_old_grants_and_restarts_the_ttl() -> None:
    clock = Clock()
    cache = GrantCache(10, clock=clock)
    cache.put(ALICE, GRANTS, cache.generation())
    clock.now += 8
    cache.put(ALICE, ("@other.test",), cache.generation())
    clock.now += 8
    assert cache.get(ALICE) == ("@other.test",)


def test_at_most_max_entries_logins_the_oldest_put_going_first() -> None:
    cache = GrantCache(10, max_entries=2, clock=Clock())
    for name in ("a", "b"):
        cache.put(f"{name}@example.test", (f"@{name}.test",), cache.generation())
    cache.put("a@example.test", ("@a2.test",), cache.generation())  # a is now the newest
    cache.put("c@example.test", (), cache.generation())
    assert cache.get("b@example.test") is None
    assert cache.get("a@example.test") == ("@a2.test",)
    assert cache.get("c@example.test") == ()
    assert repr(cache) == "GrantCache(ttl=10, entries=2)"


def test_a_login_put_again_becomes_the_newest_even_with_room_to_spare() -> None:
    cache = GrantCache(10, max_entries=3, clock=Clock())
    for name in ("a", "b"):
        cache.put(f"{name}@example.test", (), cache.generation())
    cache.put("a@example.test", ("@a2.test",), cache.generation())  # order now b, a
    for name in ("c", "d"):
        cache.put(f"{name}@example.test", (), cache.generation())  # d pushes b out
    assert cache.get("b@example.test") is None
    assert cache.get("a@example.test") == ("@a2.test",)


def test_a_cache_of_one_entry_keeps_the_last_login() -> None:
    cache = GrantCache(10, max_entries=1, clock=Clock())
    cache.put(ALICE, GRANTS, cache.generation())
    cache.put("bob@example.test", (), cache.generation())
    assert cache.get(ALICE) is None
    assert cache.get("bob@example.test") == ()


def test_a_cache_with_no_room_remembers_nothing_and_does_not_raise() -> None:
    cache = GrantCache(10, max_entries=0, clock=Clock())
    cache.put(ALICE, GRANTS, cache.generation())
    assert cache.get(ALICE) is None
    assert repr(cache) == "GrantCache(ttl=10, entries=0)"
