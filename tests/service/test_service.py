"""``eximauthd serve`` as a real subprocess, on SQLite and MariaDB, spoken to as Exim does."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximauthd.core.addresses import parse_address
from eximauthd.core.hashing import Hasher
from eximauthd.core.protocol import is_valid_reply
from eximauthd.db.accounts import OwnAccountStore
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig

from .. import servicekit as kit
from ..servicekit import http_call
from ..support import FAST_HASHING, MARIADB_HOST, MARIADB_PORT, PASSWORD, populate


@pytest.fixture
def served(db_url: str) -> Iterator[kit.Served]:
    """A running service on a populated database (SQLite or MariaDB)."""
    populate(db_url)
    with kit.running(db_url) as s:
        yield s


AUTH_CASES = [
    ("alice@example.test", PASSWORD, b"yes\n"),
    ("ALICE@Example.Test", PASSWORD, b"yes\n"),
    ("alice@example.test", "wrong", b"no\n"),
    ("alice@example.test", "", b"no\n"),
    ("", "", b"no\n"),
    ("", PASSWORD, b"no\n"),
    ("nobody@example.test", "", b"no\n"),
    ("nobody@example.test", PASSWORD, b"no\n"),
    ("carol@example.test", PASSWORD, b"no\n"),
    ("alice@example.test' OR '1'='1", PASSWORD, b"no\n"),
    ("alice@example.test\x00", PASSWORD, b"no\n"),
]

RELAY_CASES = [
    ("alice@example.test", "alice@example.test", b"yes\n"),
    ("alice@example.test", "bob@example.test", b"yes\n"),       # same domain
    ("alice@example.test", "anyone@partner.test", b"yes\n"),    # grant @partner.test
    ("bob@example.test", "anyone@partner.test", b"no\n"),       # nobody granted bob
    ("alice@example.test", "spam@elsewhere.test", b"no\n"),
    ("alice@example.test", "alice@example.test.evil", b"no\n"),
    ("alice@example.test", "", b"no\n"),                        # null sender
    ("", "alice@example.test", b"no\n"),                        # empty id
    ("", "", b"no\n"),
]


class TestVerbs:
    """Every verb and every documented answer over the socket."""

    @pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
    def test_auth(self, served: kit.Served, mech: str) -> None:
        """AUTH answers yes only for the right password of an enabled account."""
        for user, password, expected in AUTH_CASES:
            assert served.ask(kit.auth_line(user, password, mech=mech)) == expected, user

    def test_relay(self, served: kit.Served) -> None:
        """RELAY ties the envelope sender to the login: own domain or a grant."""
        for user, sender, expected in RELAY_CASES:
            reply = served.ask(kit.relay_line(user, sender, "someone@remote.test"))
            assert reply == expected, (user, sender)

    def test_empty_fields_as_exim_sends_them(self, served: kit.Served) -> None:
        """Two spaces in a row (empty id or null sender) and an empty client ip parse to no."""
        sender, rcpt = kit.b64("alice@example.test"), kit.b64("a@remote.test")
        assert served.ask(f"RELAY  {sender} {rcpt} \n".encode()) == b"no\n"      # empty id
        assert served.ask(f"RELAY {sender}  {rcpt} \n".encode()) == b"no\n"      # null sender
        assert served.ask(b"AUTH PLAIN   \n") == b"no\n"

    def test_ping(self, served: kit.Served) -> None:
        """PING is yes while the database answers."""
        assert served.ask(b"PING\n") == b"yes\n"

    def test_request_without_shutdown_is_answered(self, served: kit.Served) -> None:
        """With {5s:shutdown=no} Exim keeps its side open: the newline ends the request."""
        line = kit.auth_line("alice@example.test", PASSWORD)
        assert served.ask(line, shutdown=False) == b"yes\n"


class TestMalformed:
    """Bad requests get a defined defer answer and a log line, and the service stays up."""

    @pytest.mark.parametrize(("data", "reason"), [
        (b"", "empty"),
        (b"HELLO\n", "unknown-verb"),
        (b"ping\n", "unknown-verb"),
        (b"AUTH PLAIN !!! ZQ== 1.2.3.4\n", "bad-base64"),
        (b"AUTH PLAIN YQ== 1.2.3.4\n", "wrong-field-count"),
        (b"AUTH CRAM-MD5 YQ== YQ== 1.2.3.4\n", "unsupported-mechanism"),
        (b"AUTH PLAIN YQ== YQ== not-an-ip\n", "bad-client-ip"),
        (b"PING", "missing-newline"),
        (b"PING\nPING\n", "several-lines"),
        ("AUTH PLAIN YQ== YQ== 1.2.3.4 ä\n".encode(), "not-ascii"),
        (b"\xff\xfe\n", "not-ascii"),
        (b"RELAY " + b"A" * 5000 + b"\n", "too-long"),
    ])
    def test_defined_reply(self, served: kit.Served, data: bytes, reason: str) -> None:
        """Each malformation has its reason, Exim sees a temporary failure."""
        assert served.ask(data) == f"defer {reason}\n".encode()
        assert served.ask(b"PING\n") == b"yes\n"
        assert f"reason={reason}" in served.log()

    def test_silent_client_times_out(self, served: kit.Served) -> None:
        """A client that connects and sends nothing is answered and closed, not kept."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(served.socket_path)
            assert sock.recv(100) == b"defer read-timeout\n"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.one_of(
    st.binary(max_size=600),
    st.builds(lambda verb, rest: verb + rest,
              st.sampled_from([b"AUTH ", b"RELAY ", b"PING", b"AUTH PLAIN ", b"AUTH LOGIN "]),
              st.binary(max_size=200)),
    st.lists(st.text(alphabet="AQZaz09+/= .:", max_size=12), max_size=6).map(
        lambda fields: ("AUTH PLAIN " + " ".join(fields) + "\n").encode()),
))
def test_fuzzed_requests_get_documented_replies(fuzz_service: kit.Served, data: bytes) -> None:
    """Random bytes and near-valid lines: every reply is yes, no or defer REASON."""
    reply = fuzz_service.ask(data)
    assert is_valid_reply(reply), reply
    assert fuzz_service.process.poll() is None


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.Served]:
    """One SQLite-backed service for the fuzzers (hypothesis reuses it)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'f.sqlite3'}"
    populate(url)
    with kit.running(url) as s:
        yield s


def test_random_bytes_never_crash_the_service(fuzz_service: kit.Served) -> None:
    """500 connections of seeded random garbage; the service answers each and stays up."""
    rng = random.Random(20261128)
    for _ in range(500):
        data = rng.randbytes(rng.randrange(0, 300))
        if rng.random() < 0.5:
            data += b"\n"
        assert is_valid_reply(fuzz_service.ask(data))
    assert fuzz_service.ask(b"PING\n") == b"yes\n"


def test_unruly_connections_never_crash_the_service(fuzz_service: kit.Served) -> None:
    """Hundreds of connections at once that close early, half-close, dribble or stay silent.

    Every answer that arrives is a documented one (the exact one where the input fixes it),
    the process stays up and logs no internal error, and it still answers afterwards.
    """
    rng = random.Random(20261130)
    path = fuzz_service.socket_path
    line = kit.relay_line("alice@example.test", "bob@example.test", "x@remote.test")

    async def exchange(chunks: list[bytes], *, half_close: bool, read: bool) -> bytes | None:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(rng.random() / 50)
            if half_close:
                writer.write_eof()
            if not read:
                return None  # closed (or reset) with the answer unread, maybe before it
            return await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()

    def split(data: bytes) -> list[bytes]:
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data), rng.randrange(4))))
        return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]

    async def one(kind: int) -> tuple[bytes | None, bytes | tuple[bytes, ...] | None]:
        """The reply and, where the input fixes it, the right one(s)."""
        garbage = rng.randbytes(rng.randrange(1, 200)).replace(b"\n", b"")
        match kind:
            case 0:  # connect and close at once
                return await exchange([], half_close=False, read=False), None
            case 1:  # half-closed without a byte
                return await exchange([], half_close=True, read=True), b"defer empty\n"
            case 2:  # a partial line, then EOF
                return (await exchange(split(b"PING"), half_close=True, read=True),
                        b"defer missing-newline\n")
            case 3:  # a good line dribbled in pieces, the client keeping its side open
                return await exchange(split(line), half_close=False, read=True), b"yes\n"
            case 7:  # one for a worker thread, after the client half-closed; ~75 of these
                # at once are more than max_pending (64): overloaded is the documented answer
                return (await exchange(split(b"PING\n"), half_close=True, read=True),
                        (b"yes\n", b"defer overloaded\n"))
            case 4:  # a good line, closed without reading the answer
                return await exchange([line], half_close=rng.random() < 0.5, read=False), None
            case 5:  # garbage in pieces, with or without a newline
                data = garbage + (b"\n" if rng.random() < 0.5 else b"")
                return await exchange(split(data), half_close=True, read=True), None
            case _:  # more than the protocol's limit, never a newline
                return (await exchange([b"A" * 3000, b"B" * 3000], half_close=False,
                                       read=True), b"defer too-long\n")

    async def main() -> list[tuple[bytes | None, bytes | tuple[bytes, ...] | None]]:
        return await asyncio.gather(*(one(rng.randrange(8)) for _ in range(600)))

    outcomes = asyncio.run(main())
    assert len(outcomes) == 600
    for reply, expected in outcomes:
        if reply is None:
            continue
        assert is_valid_reply(reply), reply
        if isinstance(expected, tuple):
            assert reply in expected
        elif expected is not None:
            assert reply == expected
    assert fuzz_service.ask(b"PING\n") == b"yes\n"
    assert fuzz_service.process.poll() is None
    assert "Traceback" not in fuzz_service.log()
    assert "internal error" not in fuzz_service.log()


def test_concurrent_clients_get_right_answers(db_url: str) -> None:
    """500 concurrent clients x 6 requests: no errors, no wrong answers."""
    populate(db_url)
    cases = [(kit.auth_line(u, p), e) for u, p, e in AUTH_CASES[:4]] + [
        (kit.relay_line(u, s, "x@remote.test"), e) for u, s, e in RELAY_CASES[:5]]
    extra = {"EXIMAUTHD_SERVICE_MAX_PENDING": "5000",
             "EXIMAUTHD_SERVICE_REQUEST_TIMEOUT_MS": "60000",
             "EXIMAUTHD_SERVICE_READ_TIMEOUT_MS": "60000"}
    with kit.running(db_url, extra_env=extra) as served:
        async def client(seed: int) -> list[tuple[bytes, bytes]]:
            rng = random.Random(seed)
            out = []
            for _ in range(6):
                line, expected = rng.choice(cases)
                reader, writer = await asyncio.open_unix_connection(served.socket_path)
                writer.write(line)
                writer.write_eof()
                reply = await asyncio.wait_for(reader.read(), 60)
                writer.close()
                out.append((reply, expected))
            return out

        async def main() -> list[list[tuple[bytes, bytes]]]:
            return await asyncio.gather(*(client(i) for i in range(500)))

        results = [pair for per_client in asyncio.run(main()) for pair in per_client]
    assert len(results) == 3000
    wrong = [(got, want) for got, want in results if got != want]
    assert wrong == []


class TestDatabaseOutage:
    """The database goes away mid-run: defer, never yes; back again: answers resume."""

    def test_mariadb_cut_and_restored(self, mariadb_url: str) -> None:
        """Through a TCP proxy we cut: AUTH, RELAY needing grants and PING defer."""
        populate(mariadb_url)
        proxy = kit.TcpProxy(MARIADB_HOST, MARIADB_PORT)
        proxy.start()
        proxied = mariadb_url.replace(f":{MARIADB_PORT}/", f":{proxy.port}/")
        try:
            with kit.running(proxied) as served:
                good = kit.auth_line("alice@example.test", PASSWORD)
                granted = kit.relay_line("alice@example.test", "x@partner.test", "r@remote.test")
                assert served.ask(good) == b"yes\n"
                same_domain = kit.relay_line("alice@example.test", "bob@example.test", "r@x.test")
                assert served.ask(same_domain) == b"yes\n"  # alice's rate totals now read
                proxy.stop()
                for _ in range(3):
                    assert served.ask(good) == b"defer database-unavailable\n"
                    assert served.ask(granted) == b"defer database-unavailable\n"
                    assert served.ask(b"PING\n") == b"defer database-unavailable\n"
                status, body = http_call(served, "GET", "/readyz")
                assert (status, body["status"]) == (503, "unavailable")
                # Needs no database: the pure policy, and the rate totals read before the cut
                # (a user never read here would get `defer ratelimit-unavailable`).
                assert served.ask(same_domain) == b"yes\n"
                proxy.start()
                assert served.ask(good) == b"yes\n"
                assert served.ask(granted) == b"yes\n"
                assert served.ask(b"PING\n") == b"yes\n"
                assert "eximauthd_db_errors_total" in http_call(served, "GET", "/metrics")[1]
        finally:
            proxy.stop()


class TestLifecycle:
    """Socket ownership, stale sockets, SIGTERM."""

    def test_socket_mode_is_0660(self, served: kit.Served) -> None:
        """Only owner and group may connect."""
        assert stat.S_IMODE(os.stat(served.socket_path).st_mode) == 0o660

    def test_sigterm_exits_zero_and_removes_socket(self, served: kit.Served) -> None:
        """A clean stop: exit 0, no socket left behind."""
        assert served.stop() == 0
        assert not os.path.exists(served.socket_path)
        assert "stopped" in served.log()

    def test_stale_socket_is_replaced_live_one_is_not_stolen(self, db_url: str) -> None:
        """A leftover socket file is removed; a second instance refuses a live socket."""
        populate(db_url)
        first = kit.start_service(db_url)
        try:
            second = kit.start_service(
                db_url, extra_env={"EXIMAUTHD_SOCKET_PATH": first.socket_path}, wait=False)
            assert second.process.wait(30) == 2
            assert "another process is serving" in second.log()
            assert first.ask(b"PING\n") == b"yes\n"
            first.process.kill()  # leaves the socket file behind, like a crash
            first.process.wait(10)
            assert os.path.exists(first.socket_path)
            third = kit.start_service(
                db_url, extra_env={"EXIMAUTHD_SOCKET_PATH": first.socket_path})
            assert third.ask(b"PING\n") == b"yes\n"
            assert third.stop() == 0
        finally:
            first.stop()


class TestHttp:
    """The HTTP API gives the same decisions as the socket."""

    def test_health_ready_metrics(self, served: kit.Served) -> None:
        """healthz, readyz and Prometheus metrics."""
        assert http_call(served, "GET", "/healthz") == (200, {"status": "ok"})
        assert http_call(served, "GET", "/readyz") == (200, {"status": "ready", "reason": "ready"})
        served.ask(kit.auth_line("alice@example.test", "wrong"))
        status, text = http_call(served, "GET", "/metrics")
        assert status == 200
        assert 'eximauthd_requests_total{result="no",transport="socket",verb="AUTH"}' in text
        assert "eximauthd_request_duration_seconds_bucket" in text
        assert "eximauthd_pending_requests" in text

    def test_auth_and_relay(self, served: kit.Served) -> None:
        """POST /v1/auth and /v1/relay answer like the socket."""
        for user, password, expected in AUTH_CASES:
            status, body = http_call(served, "POST", "/v1/auth",
                                 {"username": user, "password": password})
            assert (status, body["result"]) == (200, expected.decode().strip())
        for user, sender, expected in RELAY_CASES:
            status, body = http_call(served, "POST", "/v1/relay", {
                "authenticated_id": user, "sender": sender, "recipient": "r@remote.test",
                "client_ip": "2001:db8::1"})
            assert (status, body["result"]) == (200, expected.decode().strip())

    @pytest.mark.parametrize("body", [
        b"not json", b"[]", {"username": "a@b.test"}, {"username": 1, "password": "x"},
        {"username": "a@b.test", "password": "x", "mechanism": "CRAM-MD5"},
        {"username": "a@b.test", "password": "x", "client_ip": "nope"},
        {"username": "a@b.test", "password": "x", "client_ip": "fe80::1%eth0"},
        {"username": "a@b.test", "password": "x", "extra": 1},
    ])
    def test_malformed_json_is_400(self, served: kit.Served, body: Any) -> None:
        """A malformed request is a 4xx, never a decision."""
        status, _ = http_call(served, "POST", "/v1/auth", body)
        assert status == 400

    def test_bearer_token(self, db_url: str) -> None:
        """With http.token set, /v1/* needs it; health endpoints do not."""
        populate(db_url)
        with kit.running(db_url, extra_env={"EXIMAUTHD_HTTP_TOKEN": "t0ken"}) as served:
            body = {"username": "alice@example.test", "password": PASSWORD}
            assert http_call(served, "POST", "/v1/auth", body, {})[0] == 401
            assert http_call(served, "POST", "/v1/auth", body,
                         {"Authorization": "Bearer wrong"})[0] == 401
            assert http_call(served, "POST", "/v1/auth", body,
                         {"Authorization": "Bearer t0ken"}) == (200, {"result": "yes",
                                                                      "reason": "ok"})
            assert http_call(served, "GET", "/healthz", headers={})[0] == 200


def test_log_has_one_line_per_decision_and_no_secret(served: kit.Served) -> None:
    """Decision lines carry verb, user, client, result, reason, ms; never the password."""
    served.ask(kit.auth_line("alice@example.test", PASSWORD, ip="192.0.2.77"))
    served.ask(kit.auth_line("alice@example.test", "hunter2-wrong", ip="192.0.2.77"))
    served.ask(kit.auth_line("evil\nuser=forged@example.test", "x", ip="192.0.2.77"))
    log = served.log()
    lines = [line for line in log.splitlines() if "client=192.0.2.77" in line]
    assert len(lines) == 3
    stamp, _, first = lines[0].partition(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", stamp)
    assert first.startswith("verb=AUTH user=alice@example.test mech=PLAIN client=192.0.2.77 "
                            "result=yes reason=ok ms=")
    assert "result=no reason=bad-password" in lines[1]
    assert '"evil\\nuser=forged@example.test"' in lines[2]
    assert PASSWORD not in log
    assert "hunter2" not in log
    assert "$argon2" not in log


def test_json_log_format(db_url: str) -> None:
    """--log-format json (here via config) writes one JSON object per line."""
    populate(db_url)
    with kit.running(db_url, extra_env={"EXIMAUTHD_SERVICE_LOG_FORMAT": "json"}) as served:
        served.ask(kit.auth_line("alice@example.test", "wrong", ip="192.0.2.99"))
        records = [json.loads(line) for line in served.log().splitlines() if line.strip()]
    decision = next(r for r in records if r.get("client") == "192.0.2.99")
    assert decision["verb"] == "AUTH"
    assert decision["result"] == "no"
    assert decision["reason"] == "bad-password"


def test_sighup_reopens_the_log_file(tmp_path: Path) -> None:
    """After logrotate moves the file, SIGHUP makes the service write to a new one."""
    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    populate(url)
    log_file = tmp_path / "eximauthd.log"
    rotated = tmp_path / "eximauthd.log.1"
    served = kit.start_service(url, log_file=log_file)
    try:
        served.ask(kit.auth_line("alice@example.test", "wrong", ip="192.0.2.1"))
        log_file.rename(rotated)
        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not log_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        served.ask(kit.auth_line("alice@example.test", "wrong", ip="192.0.2.2"))
        assert served.stop() == 0
        assert "client=192.0.2.1 " in rotated.read_text()
        assert "client=192.0.2.2 " in log_file.read_text()
        assert "client=192.0.2.2 " not in rotated.read_text()
    finally:
        served.stop()


class TestLimits:
    """A saturated pool or a slow check answers defer quickly, never queues without bound."""

    @pytest.fixture
    def slow_db(self, sqlite_url: str) -> str:
        """An account whose stored hash costs ~0.1-0.3 s to verify (64 MiB, t=4)."""
        from dataclasses import replace  # noqa: PLC0415

        from eximauthd.db import upgrade  # noqa: PLC0415

        db = Database(DatabaseConfig(url=sqlite_url))
        upgrade.upgrade(db)
        slow = Hasher(replace(FAST_HASHING, memory_cost=65536, time_cost=4))
        OwnAccountStore(db).add(parse_address("slow@example.test"), slow.hash(PASSWORD))
        db.dispose()
        return sqlite_url

    def test_deadline_answers_defer_timeout(self, slow_db: str) -> None:
        """A check slower than request_timeout_ms is answered 'defer timeout'."""
        with kit.running(slow_db, extra_env={
                "EXIMAUTHD_SERVICE_REQUEST_TIMEOUT_MS": "50"}) as served:
            reply = served.ask(kit.auth_line("slow@example.test", PASSWORD))
            assert reply == b"defer timeout\n"
            assert "eximauthd_timeouts_total 1.0" in http_call(served, "GET", "/metrics")[1]

    def test_saturated_pool_answers_defer_overloaded(self, slow_db: str) -> None:
        """With max_pending=1, concurrent AUTHs beyond the first are refused at once."""
        with kit.running(slow_db, extra_env={"EXIMAUTHD_SERVICE_MAX_PENDING": "1",
                                             "EXIMAUTHD_SERVICE_WORKERS": "1"}) as served:
            async def burst() -> list[bytes]:
                async def one() -> bytes:
                    reader, writer = await asyncio.open_unix_connection(served.socket_path)
                    writer.write(kit.auth_line("slow@example.test", PASSWORD))
                    writer.write_eof()
                    reply = await reader.read()
                    writer.close()
                    return reply
                return await asyncio.gather(*(one() for _ in range(8)))

            replies = asyncio.run(burst())
            assert set(replies) <= {b"yes\n", b"defer overloaded\n"}
            assert replies.count(b"yes\n") >= 1
            assert replies.count(b"defer overloaded\n") >= 1
            # Once the burst is over the service answers normally again.
            assert served.ask(kit.auth_line("slow@example.test", PASSWORD)) == b"yes\n"
