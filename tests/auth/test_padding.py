"""A failed AUTH takes as long as the costliest password check seen lately.

The pure floor with a fake clock, then the real ``eximauthd serve``: a wrong password for an
account with a costly legacy hash must not take longer than an unknown user, or the duration
names the accounts that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

from passlib.hash import sha512_crypt

from eximauthd.auth.padding import FailureFloor
from eximauthd.core.addresses import parse_address
from eximauthd.db import upgrade
from eximauthd.db.accounts import OwnAccountStore
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig

from .. import servicekit as kit


class TestFailureFloor:
    def test_the_floor_is_the_longest_check_in_the_window(self) -> None:
        """Two checks within the window: the floor is the longer one."""
        floor = FailureFloor(cap=3.0)
        floor.observe(0.2, now=1000.0)
        floor.observe(0.05, now=1100.0)
        assert floor.floor(now=1100.0) == 0.2

    def test_checks_older_than_the_window_no_longer_count(self) -> None:
        """A slow check leaves the floor once the window has moved past it."""
        floor = FailureFloor(cap=3.0, window=600.0, buckets=10)
        floor.observe(0.9, now=1000.0)
        floor.observe(0.1, now=1500.0)
        assert floor.floor(now=1500.0) == 0.9
        assert floor.floor(now=1700.0) == 0.1
        assert floor.floor(now=2200.0) == 0.0

    def test_the_floor_never_passes_its_cap(self) -> None:
        """A database stall does not push answers past Exim's timeout."""
        floor = FailureFloor(cap=1.5)
        floor.observe(30.0, now=10.0)
        assert floor.floor(now=10.0) == 1.5

    def test_padding_tops_a_failure_up_to_the_floor(self) -> None:
        """A fast failure waits the difference; a slower one waits nothing."""
        floor = FailureFloor(cap=3.0)
        floor.observe(0.5, now=10.0)
        assert floor.padding(0.125, now=11.0) == 0.375
        assert floor.padding(0.75, now=11.0) == 0.0

    def test_memory_stays_bounded(self) -> None:
        """A day of observations keeps no more slices than the window holds."""
        floor = FailureFloor(cap=3.0, window=600.0, buckets=10)
        for second in range(0, 86400, 7):
            floor.observe(0.01, now=float(second))
        assert len(floor._slices) <= 11


def _ms(log: str, user: str) -> list[float]:
    pattern = rf"verb=AUTH user={re.escape(user)} .* result=no reason=\S+ ms=([0-9.]+)"
    return [float(m) for m in re.findall(pattern, log)]


def test_an_unknown_user_takes_as_long_as_a_costly_account(tmp_path: Path) -> None:
    """After a wrong password for a SHA-crypt account, an unknown user is no faster."""
    url = f"sqlite:///{tmp_path / 'eximauthd.sqlite3'}"
    db = Database(DatabaseConfig(url=url))
    upgrade.upgrade(db)
    costly = sha512_crypt.using(rounds=100_000).hash("the-right-one")
    OwnAccountStore(db).add(parse_address("dave@example.test"), costly)
    db.dispose()
    with kit.running(url, extra_env={"EXIMAUTHD_RATELIMIT_ENABLED": "false"}) as served:
        for _ in range(2):
            assert served.ask(kit.auth_line("dave@example.test", "wrong")) == b"no\n"
        for i in range(2):
            assert served.ask(kit.auth_line(f"nobody{i}@example.test", "wrong")) == b"no\n"
        log = served.log()
    costly_ms = min(_ms(log, "dave@example.test"))
    unknown_ms = min(_ms(log, "nobody0@example.test") + _ms(log, "nobody1@example.test"))
    assert unknown_ms >= 0.8 * costly_ms, (unknown_ms, costly_ms)


def test_a_configured_minimum_holds_before_any_check_was_seen() -> None:
    """A fresh process pads to the admin's floor: the first costly probe does not stand out."""
    floor = FailureFloor(cap=3.0, minimum=0.7)
    assert floor.floor(now=0.0) == 0.7
    floor.observe(0.9, now=1.0)
    assert floor.floor(now=1.0) == 0.9
    assert FailureFloor(cap=0.5, minimum=0.7).floor(now=0.0) == 0.5
