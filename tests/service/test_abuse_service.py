"""Abuse defenses against the real ``eximauthd serve`` (SQLite and MariaDB), as Exim uses it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from eximauthd.core.addresses import parse_address
from eximauthd.core.hashing import Hasher
from eximauthd.db.accounts import OwnAccountStore
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig

from .. import servicekit as kit
from ..servicekit import relay
from ..support import (
    ALICE,
    BOB,
    FAST_HASHING,
    MARIADB_HOST,
    MARIADB_PORT,
    PASSWORD,
    SYNC_MS,
    populate,
    rate_env,
    wait_for,
)

ATTACKER_IPS = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"]
OWNER_IP = "192.0.2.50"

def _auth(served: kit.Served, user: str, password: str, ip: str) -> bytes:
    return served.ask(kit.auth_line(user, password, ip))


def _cli(served: kit.Served, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eximauthd", *args], input=stdin, text=True,
                          capture_output=True, env=served.env, timeout=60, check=False)


@pytest.fixture
def throttled(db_url: str) -> Iterator[kit.Served]:
    """Three failures lock a network, four a user; rate limits off (not under test here).
    Successes are taken back at once, so that the counts are exact (a success held for its
    batch counts like a check still running: tests/auth/test_throttle_batch_attacks.py)."""
    populate(db_url)
    env = {"EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_IP": "3",
           "EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_USER": "4",
           "EXIMAUTHD_THROTTLE_RELEASE_DELAY_MS": "0",
           "EXIMAUTHD_RATELIMIT_ENABLED": "false"}
    with kit.running(db_url, extra_env=env) as served:
        yield served


class TestThrottling:
    def test_a_network_over_its_limit_gets_no_even_with_the_right_password(
            self, throttled: kit.Served) -> None:
        """Three failures lock an address even for the right password; other addresses log in."""
        ip = ATTACKER_IPS[0]
        assert [_auth(throttled, BOB, f"guess-{i}", ip) for i in range(3)] == [b"no\n"] * 3
        assert _auth(throttled, ALICE, PASSWORD, ip) == b"no\n"
        assert "reason=throttled-ip" in throttled.log()
        assert _auth(throttled, ALICE, PASSWORD, ATTACKER_IPS[1]) == b"yes\n"

    def test_an_ipv6_64_is_one_network(self, throttled: kit.Served) -> None:
        """Failures from addresses of one IPv6 /64 lock that whole /64, not the next one."""
        for i in range(3):
            assert _auth(throttled, BOB, f"guess-{i}", f"2001:db8:1:2::{i + 1}") == b"no\n"
        assert _auth(throttled, ALICE, PASSWORD, "2001:db8:1:2:ffff::9") == b"no\n"
        assert _auth(throttled, ALICE, PASSWORD, "2001:db8:1:3::1") == b"yes\n"

    def test_the_same_wrong_password_counts_once(self, throttled: kit.Served) -> None:
        """A phone retrying a stale password does not lock its owner out."""
        ip = OWNER_IP
        assert all(_auth(throttled, ALICE, "stale-password", ip) == b"no\n" for _ in range(10))
        assert _auth(throttled, ALICE, PASSWORD, ip) == b"yes\n"

    def test_an_attacked_user_still_logs_in_from_a_network_he_used(
            self, throttled: kit.Served) -> None:
        """Failures from many networks lock a user out of new networks, not of one he used."""
        assert _auth(throttled, ALICE, PASSWORD, OWNER_IP) == b"yes\n"
        for i, ip in enumerate(ATTACKER_IPS):  # one failure per network: no network lock
            assert _auth(throttled, ALICE, f"guess-{i}", ip) == b"no\n"
        assert _auth(throttled, ALICE, PASSWORD, "203.0.113.77") == b"no\n"  # a new network
        assert "reason=throttled-user" in throttled.log()
        assert _auth(throttled, ALICE, PASSWORD, OWNER_IP) == b"yes\n"  # his usual one

    def test_a_success_does_not_reset_other_counters(self, throttled: kit.Served) -> None:
        """An attacker with a valid account cannot clear what he built against another."""
        for i, ip in enumerate(ATTACKER_IPS[:2]):
            assert _auth(throttled, ALICE, f"guess-{i}", ip) == b"no\n"
        assert _auth(throttled, BOB, PASSWORD, ATTACKER_IPS[0]) == b"yes\n"
        for i, ip in enumerate(ATTACKER_IPS[2:]):
            assert _auth(throttled, ALICE, f"more-{i}", ip) == b"no\n"
        assert _auth(throttled, ALICE, PASSWORD, "203.0.113.77") == b"no\n"
        assert "reason=throttled-user" in throttled.log()

    def test_cli_lists_and_resets_a_locked_network(self, throttled: kit.Served) -> None:
        """`throttle list` shows a locked network without passwords; `reset --ip` unlocks it."""
        ip = ATTACKER_IPS[0]
        for i in range(3):
            _auth(throttled, BOB, f"guess-{i}", ip)
        listed = _cli(throttled, "throttle", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {(r["scope"], r["subject"]): r for r in json.loads(listed.stdout)["auth_failures"]}
        assert rows[("ip", f"{ip}/32")]["locked"] is True
        assert rows[("user", BOB)] | {"window_ends": ""} == {
            "scope": "user", "subject": BOB, "failures": 3, "limit": 4, "locked": False,
            "window_ends": ""}
        assert "guess" not in listed.stdout
        reset = _cli(throttled, "throttle", "reset", "--ip", ip)
        assert reset.returncode == 0, reset.stderr
        assert f"forgot 3 failed check(s) of {ip}/32" in reset.stdout
        assert _auth(throttled, ALICE, PASSWORD, ip) == b"yes\n"

    def test_empty_credentials_are_refused_without_being_counted(
            self, throttled: kit.Served) -> None:
        """An empty username gets no but is not counted: five leave the network unlocked."""
        ip = ATTACKER_IPS[0]
        for _ in range(5):
            assert throttled.ask(f"AUTH PLAIN  {kit.b64('x')} {ip}\n".encode()) == b"no\n"
        assert _auth(throttled, ALICE, PASSWORD, ip) == b"yes\n"


def test_failures_are_forgotten_when_the_window_ends(db_url: str) -> None:
    """A network locked by failures logs in again once the throttle window has passed, unaided."""
    populate(db_url)
    # The lock holds for the window after the first failure, less up to a second where the
    # database keeps whole seconds (MariaDB's DATETIME): 2 s left a loaded machine a second
    # for the three AUTHs before the check ran after the lock had ended.  5 s leaves four.
    env = {"EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_IP": "2",
           "EXIMAUTHD_THROTTLE_WINDOW_SECONDS": "5"}
    with kit.running(db_url, extra_env=env) as served:
        ip = ATTACKER_IPS[0]
        for i in range(2):
            _auth(served, BOB, f"guess-{i}", ip)
        assert _auth(served, ALICE, PASSWORD, ip) == b"no\n"
        # A bound, not a timing: yes comes about 5 s after the failures, unaided.
        assert wait_for(lambda: _auth(served, ALICE, PASSWORD, ip) == b"yes\n", timeout=30)


def test_failures_on_one_instance_lock_out_on_another(mariadb_url: str) -> None:
    """Two services on one MariaDB share the counters: brute force is slow on every MX."""
    populate(mariadb_url)
    env = {"EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_USER": "3"}
    with kit.running(mariadb_url, extra_env=env) as mx1, \
            kit.running(mariadb_url, extra_env=env) as mx2:
        for i, ip in enumerate(ATTACKER_IPS[:3]):
            assert _auth(mx1, ALICE, f"guess-{i}", ip) == b"no\n"
        assert _auth(mx2, ALICE, PASSWORD, "203.0.113.77") == b"no\n"
        assert "reason=throttled-user" in mx2.log()
        assert _auth(mx2, BOB, PASSWORD, "203.0.113.77") == b"yes\n"


# --- outbound rate limits ----------------------------------------------------------------

def _metric(served: kit.Served, name: str) -> str:
    with urllib.request.urlopen(served.http_url + "/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


class TestRateLimits:
    def test_recipients_over_the_limit_defer_and_a_reset_lifts_it(self, db_url: str) -> None:
        """Past her recipient limit a user is deferred, logged once; `throttle reset` lifts it."""
        populate(db_url)
        with kit.running(db_url, extra_env=rate_env(recipients="3/1h,100/1d")) as served:
            assert [relay(served, ALICE) for _ in range(3)] == [b"yes\n"] * 3
            assert relay(served, ALICE) == b"defer rate-limit-recipients-1h\n"
            assert relay(served, ALICE) == b"defer rate-limit-recipients-1h\n"
            assert relay(served, BOB) == b"yes\n"
            assert served.log().count("rate limit reached: alice@example.test") == 1
            assert 'eximauthd_rate_limited_total{limit="recipients-1h"} 2.0' in _metric(
                served, "eximauthd_rate_limited_total")
            reset = _cli(served, "throttle", "reset", "--user", ALICE)
            assert reset.returncode == 0, reset.stderr
            assert wait_for(lambda: relay(served, ALICE) == b"yes\n")

    def test_a_message_counts_once_whatever_its_recipients(self, db_url: str) -> None:
        """A message counts once however many recipients: the third message is deferred."""
        populate(db_url)
        env = rate_env(recipients="1000/1h", messages="2/1h")
        with kit.running(db_url, extra_env=env) as served:
            for txn in ("4242.100", "4242.200"):
                assert [relay(served, ALICE, txn) for _ in range(4)] == [b"yes\n"] * 4
            assert relay(served, ALICE, "4243.300") == b"defer rate-limit-messages-1h\n"

    def test_user_limits_override_the_defaults(self, db_url: str) -> None:
        """`user limits --recipients none` unlimits that user; others keep the default."""
        populate(db_url)
        with kit.running(db_url, extra_env=rate_env(recipients="2/1h")) as served:
            shown = _cli(served, "user", "limits", BOB, "--recipients", "none")
            assert shown.returncode == 0, shown.stderr
            assert f"{BOB} recipients: none (unlimited)" in shown.stdout
            assert f"{BOB} messages: 300/1h, 2000/1d (default)" in shown.stdout
            time.sleep(5 * SYNC_MS / 1000)  # the service reads overrides at each sync
            assert all(relay(served, BOB) == b"yes\n" for _ in range(5))
            assert [relay(served, ALICE) for _ in range(3)][-1] == \
                b"defer rate-limit-recipients-1h\n"

    def test_instances_share_the_counts(self, mariadb_url: str) -> None:
        """Two services on one MariaDB add up a user's recipients and together defer her."""
        populate(mariadb_url)
        env = rate_env(recipients="4/1h")
        with kit.running(mariadb_url, extra_env=env) as mx1, \
                kit.running(mariadb_url, extra_env=env) as mx2:
            assert [relay(mx1, ALICE) for _ in range(2)] == [b"yes\n"] * 2
            assert [relay(mx2, ALICE) for _ in range(2)] == [b"yes\n"] * 2
            assert wait_for(lambda: relay(mx1, ALICE) == b"defer rate-limit-recipients-1h\n")

    def test_rate_limiting_defers_once_the_database_is_gone_too_long(self,
                                                                     mariadb_url: str) -> None:
        """Relays defer once the database is gone past the staleness limit; pass when back."""
        populate(mariadb_url)
        proxy = kit.TcpProxy(MARIADB_HOST, MARIADB_PORT)
        proxy.start()
        url = mariadb_url.replace(f":{MARIADB_PORT}/", f":{proxy.port}/")
        env = rate_env() | {"EXIMAUTHD_RATELIMIT_MAX_STALENESS_SECONDS": "1"}
        try:
            with kit.running(url, extra_env=env) as served:
                assert relay(served, ALICE) == b"yes\n"
                proxy.stop()
                assert wait_for(lambda: relay(served, ALICE) ==
                                 b"defer ratelimit-unavailable\n")
                proxy.start()
                assert wait_for(lambda: relay(served, ALICE) == b"yes\n", timeout=20)
        finally:
            proxy.stop()


# --- the positive cache -------------------------------------------------------------------

@pytest.fixture
def cached(db_url: str) -> Iterator[kit.Served]:
    populate(db_url)
    env = {"EXIMAUTHD_CACHE_TTL_SECONDS": "300", "EXIMAUTHD_CACHE_REVALIDATE_SECONDS": "1"}
    with kit.running(db_url, extra_env=env) as served:
        yield served


def _cached_answers(served: kit.Served) -> int:
    return served.log().count("reason=ok-cached")


class TestAuthCache:
    def test_a_repeat_from_the_same_network_is_answered_from_the_cache(
            self, cached: kit.Served) -> None:
        """A repeat from one network is answered from the cache; a new network is checked afresh."""
        assert _auth(cached, ALICE, PASSWORD, OWNER_IP) == b"yes\n"
        assert _auth(cached, ALICE, PASSWORD, OWNER_IP) == b"yes\n"
        assert _cached_answers(cached) == 1
        assert _auth(cached, ALICE, PASSWORD + "x", OWNER_IP) == b"no\n"
        assert _auth(cached, ALICE, PASSWORD, "203.0.113.9") == b"yes\n"  # checked afresh
        assert _cached_answers(cached) == 1

    def test_user_passwd_invalidates_the_old_password_at_once(self, cached: kit.Served) -> None:
        """After `user passwd` the cached old password gets no at once and the new one gets yes."""
        assert _auth(cached, ALICE, PASSWORD, OWNER_IP) == b"yes\n"
        changed = _cli(cached, "user", "passwd", ALICE, "--password-stdin",
                       stdin="brand-new-pw\n")
        assert changed.returncode == 0, changed.stderr
        assert _auth(cached, ALICE, PASSWORD, OWNER_IP) == b"no\n"
        assert _auth(cached, ALICE, "brand-new-pw", OWNER_IP) == b"yes\n"

    def test_user_disable_invalidates_at_once(self, cached: kit.Served) -> None:
        """After `user disable` a login that was answered from the cache gets no at once."""
        assert _auth(cached, ALICE, PASSWORD, OWNER_IP) == b"yes\n"
        assert _auth(cached, ALICE, PASSWORD, OWNER_IP) == b"yes\n"
        disabled = _cli(cached, "user", "disable", ALICE)
        assert disabled.returncode == 0, disabled.stderr
        assert _auth(cached, ALICE, PASSWORD, OWNER_IP) == b"no\n"

    def test_a_change_made_behind_its_back_ends_cached_logins_at_revalidation(
            self, cached: kit.Served, db_url: str) -> None:
        """A panel (or another host) changes the row directly: no FORGET reaches the service."""
        assert _auth(cached, ALICE, PASSWORD, OWNER_IP) == b"yes\n"
        db = Database(DatabaseConfig(url=db_url))
        try:
            OwnAccountStore(db).set_password(parse_address(ALICE),
                                             Hasher(FAST_HASHING).hash("panel-set-pw"))
        finally:
            db.dispose()
        assert wait_for(lambda: _auth(cached, ALICE, PASSWORD, OWNER_IP) == b"no\n")

    def test_cached_logins_stop_when_the_database_is_gone(self, mariadb_url: str) -> None:
        """A cached login is not served while the database is unreachable: AUTH defers instead."""
        populate(mariadb_url)
        proxy = kit.TcpProxy(MARIADB_HOST, MARIADB_PORT)
        proxy.start()
        url = mariadb_url.replace(f":{MARIADB_PORT}/", f":{proxy.port}/")
        env = {"EXIMAUTHD_CACHE_TTL_SECONDS": "300", "EXIMAUTHD_CACHE_REVALIDATE_SECONDS": "1"}
        try:
            with kit.running(url, extra_env=env) as served:
                assert _auth(served, ALICE, PASSWORD, OWNER_IP) == b"yes\n"
                proxy.stop()
                assert wait_for(lambda: _auth(served, ALICE, PASSWORD, OWNER_IP) ==
                                 b"defer database-unavailable\n")
        finally:
            proxy.stop()
