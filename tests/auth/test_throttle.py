"""Throttling as the service decides it: a limit of N runs at most N password checks.

Real decisions (:class:`~eximauthd.service.decider.Decider`, real argon2 at the cheapest
cost) against
real databases, SQLite and MariaDB.  A ``bad-password`` or ``unknown-user`` answer is a
password check that ran; ``throttled-*`` is one refused before any check.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from eximauthd.core.addresses import parse_address
from eximauthd.core.clients import NO_ADDRESS
from eximauthd.core.decision import Result
from eximauthd.core.hashing import Hasher
from eximauthd.core.protocol import AuthRequest
from eximauthd.db.accounts import OwnAccountStore
from eximauthd.db.counters import AttemptStore, utcnow
from eximauthd.db.engine import Database
from eximauthd.service.decider import Decider
from eximauthd.settings import ThrottleConfig

from ..support import FAST_HASHING, config_for, decide_auth

ALICE = "alice@example.test"
PASSWORD = "right-password"
NAT = "203.0.113.7"


def _decider(database: Database, **throttle: int) -> Decider:
    config = replace(config_for(database.config.url),
                     throttle=ThrottleConfig(**throttle))  # type: ignore[arg-type]
    return Decider(config)


def _auth(decider: Decider, user: str, password: str, ip: str) -> tuple[Result, str]:
    decision = decide_auth(decider, AuthRequest("PLAIN", user, password, ip))
    return decision.result, decision.reason


@pytest.fixture
def accounts(database: Database) -> Database:
    store, hasher = OwnAccountStore(database), Hasher(FAST_HASHING)
    for user in (ALICE, "bob@example.test", "carol@example.test", "dave@example.test",
                 "erin@example.test"):
        store.add(parse_address(user), hasher.hash(PASSWORD))
    return database


def _concurrent_guesses(deciders: list[Decider], guesses: int) -> Counter[str]:
    barrier = threading.Barrier(guesses)

    def guess(i: int) -> str:
        barrier.wait()
        return _auth(deciders[i % len(deciders)], ALICE, f"guess-{i}", "198.51.100.9")[1]

    with ThreadPoolExecutor(guesses) as pool:
        return Counter(pool.map(guess, range(guesses)))


class TestConcurrentGuesses:
    def test_a_limit_of_n_runs_at_most_n_checks_however_many_arrive_at_once(
            self, accounts: Database) -> None:
        """24 distinct guesses at once against a limit of 5: at most 5 passwords checked."""
        decider = _decider(accounts, max_failures_per_ip=5, max_failures_per_user=5)
        try:
            answers = _concurrent_guesses([decider], 24)
        finally:
            decider.close()
        assert answers["bad-password"] <= 5
        assert answers["bad-password"] + answers["throttled-ip"] + answers["throttled-user"] \
            == 24

    def test_two_instances_share_one_limit_of_checks(self, mariadb_url: str) -> None:
        """Two instances on one MariaDB, 24 guesses at once: at most 5 checks in all."""
        db = Database(replace(config_for(mariadb_url).database))
        from eximauthd.db import upgrade  # noqa: PLC0415

        upgrade.upgrade(db)
        OwnAccountStore(db).add(parse_address(ALICE), Hasher(FAST_HASHING).hash(PASSWORD))
        deciders = [_decider(db, max_failures_per_ip=5, max_failures_per_user=5)
                    for _ in range(2)]
        try:
            answers = _concurrent_guesses(deciders, 24)
        finally:
            for decider in deciders:
                decider.close()
            db.dispose()
        assert answers["bad-password"] <= 5
        assert sum(answers.values()) == 24


class TestCountingRules:
    def test_two_devices_alternating_stale_passwords_count_two(
            self, accounts: Database) -> None:
        """Behind one NAT, two stale passwords tried in turn 4 times each count 2, not 8."""
        decider = _decider(accounts, max_failures_per_ip=3, max_failures_per_user=3)
        try:
            for _ in range(4):
                for stale in ("old-phone-password", "old-laptop-password"):
                    assert _auth(decider, ALICE, stale, NAT) == (Result.NO, "bad-password")
            assert _auth(decider, ALICE, PASSWORD, NAT) == (Result.YES, "ok")
        finally:
            decider.close()

    def test_requests_without_a_client_address_count_under_one_subject(
            self, accounts: Database) -> None:
        """Local submissions (no address) share one network: its limit holds for them too."""
        decider = _decider(accounts, max_failures_per_ip=3, max_failures_per_user=100)
        try:
            users = ["bob@example.test", "carol@example.test", "dave@example.test"]
            for user in users:
                assert _auth(decider, user, "wrong", "") == (Result.NO, "bad-password")
            assert _auth(decider, "erin@example.test", PASSWORD, "") == \
                (Result.NO, "throttled-ip")
        finally:
            decider.close()
        listed = AttemptStore(accounts).list(utcnow().replace(year=2000))
        assert ("ip", NO_ADDRESS, 3) in {(r.scope, r.subject, r.failures) for r in listed}

    def test_successes_never_count(self, accounts: Database) -> None:
        """Five users logging in from one network with a limit of 2 all get in."""
        decider = _decider(accounts, max_failures_per_ip=2, max_failures_per_user=2)
        try:
            users = [ALICE, "bob@example.test", "carol@example.test", "dave@example.test",
                     "erin@example.test"]
            for user in users * 2:
                assert _auth(decider, user, PASSWORD, NAT) == (Result.YES, "ok")
        finally:
            decider.close()
        assert AttemptStore(accounts).list(utcnow().replace(year=2000)) == []

    def test_refused_guesses_take_their_reservation_back(self, accounts: Database) -> None:
        """Guesses refused over the limit leave the count at the limit (no row per guess)."""
        decider = _decider(accounts, max_failures_per_ip=2, max_failures_per_user=100)
        try:
            for i in range(12):
                expected = "unknown-user" if i < 2 else "throttled-ip"
                assert _auth(decider, f"nobody{i}@example.test", "x", NAT) == \
                    (Result.NO, expected)
        finally:
            decider.close()
        listed = AttemptStore(accounts).list(utcnow().replace(year=2000))
        assert {(r.scope, r.failures) for r in listed if r.scope == "ip"} == {("ip", 2)}

    def test_an_owner_on_a_known_network_gets_in_while_his_account_is_attacked(
            self, accounts: Database) -> None:
        """The user limit is lifted for a network the owner logged in from; others stay out."""
        # Counted exactly: the owner's success is taken back at once, not batched with others
        # a moment later (until then it would count as one of the limit's two).
        decider = _decider(accounts, max_failures_per_ip=100, max_failures_per_user=2,
                           release_delay_ms=0)
        try:
            assert _auth(decider, ALICE, PASSWORD, NAT) == (Result.YES, "ok")
            for i in range(3):
                _auth(decider, ALICE, f"guess-{i}", "198.51.100.1")
            assert _auth(decider, ALICE, PASSWORD, "198.51.100.2") == \
                (Result.NO, "throttled-user")
            assert _auth(decider, ALICE, PASSWORD, NAT) == (Result.YES, "ok")
        finally:
            decider.close()


class TestExemptNetworks:
    def test_an_exempt_network_is_never_locked_but_its_users_are(
            self, accounts: Database) -> None:
        """A webmail host in exempt_networks: guesses for many users never lock it out."""
        config = replace(config_for(accounts.config.url), throttle=ThrottleConfig(
            max_failures_per_ip=2, max_failures_per_user=2,
            exempt_networks=("203.0.113.0/24",)))
        decider = Decider(config)
        try:
            for i in range(6):
                assert _auth(decider, f"nobody{i}@example.test", "x", NAT) == \
                    (Result.NO, "unknown-user")
            assert _auth(decider, ALICE, PASSWORD, NAT) == (Result.YES, "ok")
            for i in range(2):
                _auth(decider, "bob@example.test", f"guess-{i}", NAT)
            assert _auth(decider, "bob@example.test", PASSWORD, NAT) == \
                (Result.NO, "throttled-user")
            assert _auth(decider, "carol@example.test", PASSWORD, "::ffff:203.0.113.9") == \
                (Result.YES, "ok")
        finally:
            decider.close()
        subjects = {(r.scope, r.subject)
                    for r in AttemptStore(accounts).list(utcnow().replace(year=2000))}
        assert not any(scope == "ip" for scope, _ in subjects)
