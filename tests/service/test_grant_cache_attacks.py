"""An attacker's view of the grant cache, the FORGET that `grant remove` sends, and the decision
line's fast path: a relay that should be refused, a removed grant that keeps working, a wedged
CLI, a forged log line.

Storage is the real SQLite and MariaDB (``db_url``); the store is only ever wrapped by spies that
call it.  The hostile listeners are real Unix sockets at the path the CLI is configured with.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from eximauthd.auth.grantcache import GrantCache
from eximauthd.core.decision import Decision, Reason, Result
from eximauthd.core.policy import Relay, read_relay
from eximauthd.core.protocol import RelayRequest
from eximauthd.db.engine import Database
from eximauthd.db.grants import Grant, GrantStore
from eximauthd.service.decider import Decider
from eximauthd.service.logs import DecisionFormatter, clean
from eximauthd.settings import Config, PolicyConfig

from .. import servicekit as kit
from ..support import (
    ALICE,
    FAST_HASHING_ENV,
    config_for,
    create_mariadb_database,
    decide_relay,
    drop_mariadb_database,
    populate,
)

GRANTED = RelayRequest(ALICE, "boss@partner.test", "x@remote.test", "")
PARTNER = Grant(ALICE, "@partner.test")


def _config(db_url: str, seconds: int) -> Config:
    return replace(config_for(db_url), policy=PolicyConfig(grant_cache_seconds=seconds))


@pytest.fixture
def decider(db_url: str) -> Iterator[Decider]:
    """alice holds @partner.test; grants remembered for an hour (only FORGET can end them)."""
    populate(db_url)
    made = Decider(_config(db_url, 3600))
    yield made
    made.close()


def _yes(decision: Decision) -> bool:
    return decision.result is Result.YES


# --- 1. the cache: keys, races, size --------------------------------------------------------

@pytest.mark.parametrize("spelling", ["ALICE@EXAMPLE.TEST", "Alice@Example.Test"])
def test_any_spelling_of_the_login_fills_the_entry_the_cli_forget_drops(
        decider: Decider, spelling: str) -> None:
    """Exim passes the id as the client typed it; `grant remove` sends the canonical one.
    Both must name one entry, or the FORGET would miss what the RELAY filled."""
    assert _yes(decide_relay(decider, replace(GRANTED, authenticated_id=spelling)))
    assert GrantStore(decider.db).remove(PARTNER)
    decider.forget(ALICE)
    assert decide_relay(decider, replace(GRANTED, authenticated_id=spelling)) == \
        Decision.no(Reason.SENDER_MISMATCH)


@pytest.mark.parametrize("look_alike", [
    "alice@example.test.", "alice@exam\u0440le.test", "alice\u200b@example.test",
    "\u0430lice@example.test", "alice@example.test\x00", " alice@example.test",
])
def test_a_look_alike_login_never_borrows_alices_remembered_grants(
        decider: Decider, look_alike: str) -> None:
    assert _yes(decide_relay(decider, GRANTED))
    decision = decide_relay(decider, replace(GRANTED, authenticated_id=look_alike))
    assert decision.result is Result.NO


def test_a_lookup_that_read_before_grant_remove_does_not_store_the_removed_grant(
        decider: Decider) -> None:
    """The race FORGET must win, with the real store: a worker's read returned the old grants,
    then `grant remove` committed and its FORGET reached the loop, then the worker put."""
    real_list = decider.grants.list

    def read_then_removed(user: str | None = None, *, primary: bool = False) -> list[Grant]:
        rows = real_list(user, primary=primary)  # the old grants, @partner.test among them
        assert GrantStore(decider.db).remove(PARTNER)
        decider.forget(ALICE)
        return rows

    decider.grants.list = read_then_removed  # type: ignore[method-assign]
    assert _yes(decide_relay(decider, GRANTED))  # that one request may still pass
    decider.grants.list = real_list  # type: ignore[method-assign]
    assert decide_relay(decider, GRANTED) == Decision.no(Reason.SENDER_MISMATCH)


def test_threads_filling_while_grant_remove_forgets_never_keep_the_removed_grant(
        decider: Decider) -> None:
    """Workers read and put alice's grants in a loop; once the removal is committed and its
    FORGET handled, no answer after that may be yes."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            while not stop.is_set():
                settled = decider.relay_without_storage(_relay())
                if settled is None:
                    decider.relay_with_grants(_relay())
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.2)
        assert GrantStore(decider.db).remove(PARTNER)
        decider.forget(ALICE)
        for _ in range(50):
            assert decide_relay(decider, GRANTED) == Decision.no(Reason.SENDER_MISMATCH)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    assert not errors


def _relay() -> Relay:
    relay = read_relay(GRANTED.authenticated_id, GRANTED.sender, GRANTED.recipient)
    assert isinstance(relay, Relay)
    return relay


def test_a_flood_of_logins_keeps_the_cache_within_max_entries() -> None:
    cache = GrantCache(60, max_entries=3)
    for n in range(100):
        cache.put(f"u{n}@example.test", ("@partner.test",), cache.generation())
    assert repr(cache) == "GrantCache(ttl=60, entries=3)"
    assert cache.get("u99@example.test") == ("@partner.test",)
    assert cache.get("u0@example.test") is None


def test_a_cache_of_no_entries_remembers_nothing_and_does_not_raise() -> None:
    """max_entries=0 emptied an empty dict: StopIteration escaped put(), in a worker thread."""
    cache = GrantCache(60, max_entries=0)
    cache.put(ALICE, ("@partner.test",), cache.generation())
    assert cache.get(ALICE) is None


def test_ttl_zero_reads_the_grants_at_every_relay(db_url: str) -> None:
    populate(db_url)
    decider = Decider(_config(db_url, 0))
    try:
        assert _yes(decide_relay(decider, GRANTED))
        assert GrantStore(decider.db).remove(PARTNER)
        assert decide_relay(decider, GRANTED) == Decision.no(Reason.SENDER_MISMATCH)
    finally:
        decider.close()


def test_grant_remove_ends_a_remembered_grant_on_the_postfix_policy_path(
        sqlite_url: str) -> None:
    populate(sqlite_url)
    base = Path(tempfile.mkdtemp(prefix="ead-", dir="/tmp"))
    policy_path = str(base / "policy.sock")
    env = kit.policy_env(policy_path) | {"EXIMAUTHD_POLICY_GRANT_CACHE_SECONDS": "3600"}
    with kit.running(sqlite_url, extra_env=env) as served, \
            kit.PolicyClient(policy_path) as client:
        spoof = kit.policy_request(ALICE, "boss@partner.test")
        assert client.ask(spoof) == "action=DUNNO"
        assert client.ask(spoof) == "action=DUNNO"
        removed = subprocess.run(
            [sys.executable, "-m", "eximauthd", "grant", "remove", ALICE, "@partner.test"],
            env=served.env, capture_output=True, text=True, timeout=60, check=False)
        assert removed.returncode == 0, removed.stderr
        reply = client.ask(spoof)
        assert (reply or "").startswith("action=REJECT"), reply


# --- 2. `grant remove` and its FORGET ---------------------------------------------------------

class Listener:
    """A fake service at a Unix socket: *reply* to each connection (None: read, never answer)."""

    def __init__(self, path: str, reply: bytes | None) -> None:
        self.path, self.reply = path, reply
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.received: list[bytes] = []
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)
                self.received.append(conn.recv(4096))
                if self.reply is not None:
                    conn.sendall(self.reply)
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def _grant_remove(db_url: str, socket_path: str, seconds: str = "600") -> tuple[
        subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env |= FAST_HASHING_ENV | {"EXIMAUTHD_DATABASE_URL": db_url,
                               "EXIMAUTHD_SOCKET_PATH": socket_path,
                               "EXIMAUTHD_POLICY_GRANT_CACHE_SECONDS": seconds}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "eximauthd", "grant", "remove", ALICE, "@partner.test"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    return done, time.monotonic() - started


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="ead-", dir="/tmp"))
    yield base
    for entry in base.iterdir():
        entry.unlink()
    base.rmdir()


def test_grant_remove_without_a_service_removes_and_says_nothing_alarming(
        sqlite_url: str, sock_dir: Path) -> None:
    populate(sqlite_url)
    done, _ = _grant_remove(sqlite_url, str(sock_dir / "none.sock"))
    assert done.returncode == 0, done.stderr
    assert "removed:" in done.stdout
    assert "WARNING" not in done.stderr
    db = Database(config_for(sqlite_url).database)
    try:
        assert PARTNER not in GrantStore(db).list(ALICE)
    finally:
        db.dispose()


@pytest.mark.parametrize("reply", [None, b"garbage\n", b"no\n", b"defer internal-error\n", b""],
                         ids=["silent", "garbage", "no", "defer", "hangs-up"])
def test_a_listener_that_does_not_confirm_forget_gets_the_admin_warned_in_bounded_time(
        sqlite_url: str, sock_dir: Path, reply: bytes | None) -> None:
    """A fake or broken listener at the socket path swallows the FORGET: the grant is removed
    from the database, but a real service elsewhere may honour it until its entry expires.
    The command must end soon and say so, not print 'removed' as if all were done."""
    populate(sqlite_url)
    path = str(sock_dir / "fake.sock")
    listener = Listener(path, reply)
    try:
        done, took = _grant_remove(sqlite_url, path)
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr
    assert took < 15
    assert listener.received
    assert listener.received[0].startswith(b"FORGET ")
    assert "removed:" in done.stdout
    warning = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warning) == 1, done.stderr
    assert path in warning[0]
    assert "600" in warning[0]


def test_a_listener_that_confirms_forget_gets_no_warning(
        sqlite_url: str, sock_dir: Path) -> None:
    populate(sqlite_url)
    path = str(sock_dir / "ok.sock")
    listener = Listener(path, b"yes\n")
    try:
        done, _ = _grant_remove(sqlite_url, path)
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr


# --- 3. the decision line's fast path ---------------------------------------------------------

FORGERIES = [
    "alice@example.test\nverb=AUTH user=x mech=PLAIN client=203.0.113.9 result=no reason=bad",
    "alice\u2028verb=AUTH", "alice\u2029x", "alice\x85x", "alice\rx", "a\u00a0b", "a\u3000b",
    'a"b', "a b", "", "x" * 129, "x" * 128, "a\\", "\udcff", "a\tb", "\x1b[31m",
]


def _line(fields: dict[str, Any]) -> str:
    record = logging.LogRecord("eximauthd.decisions", logging.INFO, "", 0, "decision", (), None)
    record.decision = fields
    return DecisionFormatter().format(record)


@pytest.mark.parametrize("value", FORGERIES)
@pytest.mark.parametrize("where", ["user", "sender", "client"])
def test_no_field_can_forge_a_line_or_a_fail2ban_match(value: str, where: str) -> None:
    fields: dict[str, Any] = {"verb": "RELAY", "user": ALICE, "sender": "a@b.test",
                              "rcpt": "c@d.test", "client": "192.0.2.1", "result": "yes",
                              "reason": "same-domain", "ms": 0.4, "via": "socket"}
    fields[where] = value
    line = _line(fields)
    assert line == " ".join(f"{k}={clean(v if type(v) is str else str(v))}"
                            for k, v in fields.items())
    assert line.isprintable()
    assert len(line.splitlines()) == 1
    assert not re.search(r"(^|\s)verb=AUTH\b", line)


@pytest.mark.parametrize("value", [None, 0, b"a\nb", 3.5, True, ["a b"]])
def test_non_string_values_are_cleaned_like_their_text(value: object) -> None:
    line = _line({"verb": "RELAY", "user": value, "result": "no"})
    assert line == f"verb=RELAY user={clean(str(value))} result=no"
    assert line.isprintable()


# --- 4. a read replica behind the primary ------------------------------------------------------

@pytest.fixture
def replica_url(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A second database of the same backend, standing for a replica (its replication is
    whatever the test does to it by hand)."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'replica.sqlite3'}"
        return
    admin: Any = request.getfixturevalue("mariadb_admin")
    name = create_mariadb_database(admin)
    yield db_url.rsplit("/", 1)[0] + "/" + name
    drop_mariadb_database(admin, name)


def test_a_lagging_replica_cannot_pin_a_removed_grant_for_the_whole_ttl(
        db_url: str, replica_url: str) -> None:
    """`grant remove` commits on the primary and FORGETs; the replica has not applied it yet.
    Without the cache the grant would relay only while the replica lags.  The RELAY after the
    FORGET read the lagging replica and remembered the removed grant for grant_cache_seconds:
    an hour of a removed grant, long after the replica caught up."""
    populate(db_url)
    populate(replica_url)
    config = _config(db_url, 3600)
    decider = Decider(replace(config, database=replace(config.database,
                                                       replica_url=replica_url)))
    replica = Database(config_for(replica_url).database)
    try:
        assert _yes(decide_relay(decider, GRANTED))
        assert GrantStore(decider.db).remove(PARTNER)  # the primary
        decider.forget(ALICE)
        decide_relay(decider, GRANTED)  # a RELAY while the replica still lags
        assert GrantStore(replica).remove(PARTNER)  # the replica catches up
        assert decide_relay(decider, GRANTED) == Decision.no(Reason.SENDER_MISMATCH)
    finally:
        replica.dispose()
        decider.close()
