"""The cached AUTH answered on the event loop, attacked over the real socket: after the owner's
success is cached, no other password, look-alike login or other client gets it from the cache."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from .. import servicekit as kit
from ..support import ALICE, BOB, PASSWORD, populate

OWNER_IP = "192.0.2.50"


def _line(user: bytes, password: bytes, ip: str) -> bytes:
    return b"AUTH PLAIN %s %s %s\n" % (base64.b64encode(user), base64.b64encode(password),
                                       ip.encode())


@pytest.fixture
def cached(db_url: str) -> Iterator[kit.Served]:
    populate(db_url)
    env = {"EXIMAUTHD_CACHE_TTL_SECONDS": "300", "EXIMAUTHD_CACHE_REVALIDATE_SECONDS": "60"}
    with kit.running(db_url, extra_env=env) as served:
        yield served


def test_nothing_but_the_same_login_hits_a_cached_success(cached: kit.Served) -> None:
    """Other passwords (NUL, space, case, invalid UTF-8), look-alike logins, a disabled
    account and another user with the same password, other client fields: checked afresh
    or refused, never answered from the owner's entry."""
    alice, password = ALICE.encode(), PASSWORD.encode()
    assert cached.ask(_line(alice, password, OWNER_IP)) == b"yes\n"
    assert cached.ask(_line(alice, password, OWNER_IP)) == b"yes\n"
    assert cached.log().count("reason=ok-cached") == 1
    refused = [
        (alice, password + b"\x00"), (alice, b"\x00" + password), (alice, password + b" "),
        (alice, password[:-1]), (alice, password.swapcase()), (alice, password + b"\xff"),
        (alice, password + b"\xed\xa0\x80"), (alice + b" ", password),
        (alice.replace(b"a", b"\xc3\xa1", 1), password), (alice + b".", password),
        (alice + b"\x00", password), (b"carol@example.test", password),  # disabled
    ]
    for user, guess in refused:
        assert cached.ask(_line(user, guess, OWNER_IP)) == b"no\n", (user, guess)
    assert cached.ask(_line(alice, password, "fe80::1%eth0")) == b"defer bad-client-ip\n"
    assert cached.ask(_line(alice, password, "192.0.2.50 ")) != b"yes\n"
    # bob has the same password: his own check, never alice's entry.
    assert cached.ask(_line(BOB.encode(), password, OWNER_IP)) == b"yes\n"
    # Another network is checked afresh, not answered from the owner's entry.
    assert cached.ask(_line(alice, password, "198.51.100.7")) == b"yes\n"
    log = cached.log()
    assert log.count("reason=ok-cached") == 1
    assert PASSWORD not in log
