"""What HTTP clients can hold from ``eximauthd serve``: descriptors, time, workers and the log.

A real ``eximauthd serve`` subprocess, its descriptor limit lowered (``prlimit``) for it only.  All
traffic is loopback, every loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eximauthd.service.server import httpguard

from .. import servicekit as kit
from ..servicekit import http_call
from ..support import MARIADB_HOST, MARIADB_PORT, PASSWORD, populate

UNFINISHED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # no blank line: the header never ends


def _port(served: kit.Served) -> int:
    return int(served.http_url.rsplit(":", 1)[1])


@contextlib.contextmanager
def _held(port: int, count: int, data: bytes = UNFINISHED) -> Iterator[list[socket.socket]]:
    """*count* TCP connections to *port*, each having sent *data*, closed on exit."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(sock)
            with contextlib.suppress(OSError):  # closed at once by the cap: that is fine
                sock.sendall(data)
        yield held
    finally:
        for sock in held:
            sock.close()


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True  # reset
    return True


class TestDescriptors:
    """Idle HTTP connections cannot take the descriptors the Unix socket needs (F1)."""

    def test_idle_http_connections_leave_the_socket_answering(self, sqlite_url: str) -> None:
        """700 unfinished HTTP requests under a 512-descriptor limit: PING and AUTH still yes."""
        populate(sqlite_url)
        with kit.running(sqlite_url, open_files=(512, 512)) as served:
            with _held(_port(served), 700):
                time.sleep(0.5)
                # Within the service's read timeout (1 s), as Exim would wait.
                assert served.ask(b"PING\n", timeout=1.0) == b"yes\n"
                assert served.ask(kit.auth_line("alice@example.test", PASSWORD),
                                  timeout=1.0) == b"yes\n"
                time.sleep(1.0)
                assert served.ask(b"PING\n", timeout=1.0) == b"yes\n"
            assert http_call(served, "GET", "/healthz") == (200, {"status": "ok"})
            log = served.log()
        assert len(log) < 20_000
        assert log.count("closing new ones") == 1
        assert "out of system resource" not in log

    def test_unfinished_request_is_disconnected_after_the_deadline(self,
                                                                   sqlite_url: str) -> None:
        """Silent, half-sent header, half-sent body, half-sent second request: all cut in 5 s."""
        populate(sqlite_url)
        with kit.running(sqlite_url) as served:
            port = _port(served)
            body = (b"POST /v1/auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{\"username\":")
            second = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + UNFINISHED
            with _held(port, 1, b"") as silent, _held(port, 1) as header, \
                    _held(port, 1, body) as partial_body, _held(port, 1, second) as after_one:
                started = time.monotonic()
                for sock in (*silent, *header, *partial_body, *after_one):
                    assert _closed_by_peer(sock, within=httpguard.REQUEST_DEADLINE_S + 3)
                assert time.monotonic() - started < httpguard.REQUEST_DEADLINE_S + 3
            assert http_call(served, "GET", "/healthz") == (200, {"status": "ok"})

    def test_open_files_soft_limit_is_raised_to_the_hard_limit(self, sqlite_url: str) -> None:
        """Started with a soft limit of 100 under a hard 400: serves with 400, and says so."""
        populate(sqlite_url)
        with kit.running(sqlite_url, open_files=(100, 400)) as served:
            limits = Path(f"/proc/{served.process.pid}/limits").read_text()
            assert served.ask(b"PING\n") == b"yes\n"
            log = served.log()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["400", "400"]
        assert "open files limit: 400 (raised from 100)" in log

    def test_accept_errors_are_logged_once_per_interval(self, sqlite_url: str) -> None:
        """Out of descriptors for a while: one accept error line, then PING yes again."""
        populate(sqlite_url)
        extra = {"EXIMAUTHD_SERVICE_READ_TIMEOUT_MS": "3000"}
        with kit.running(sqlite_url, extra_env=extra, open_files=(64, 64)) as served:
            held: list[socket.socket] = []
            try:
                for _ in range(150):  # silent socket clients, each held for the read timeout
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    held.append(sock)
                    sock.connect(served.socket_path)
                time.sleep(2.0)
            finally:
                for sock in held:
                    sock.close()
            time.sleep(3.5)  # the accepted ones time out, the rest are accepted and time out
            assert served.ask(b"PING\n", timeout=5) == b"yes\n"
            log = served.log()
        assert len(log) < 50_000
        assert 1 <= log.count("out of system resource") <= 2


class TestLoopErrorHandler:
    """asyncio's own error reports are throttled, per kind."""

    def test_repeated_errors_log_one_line_and_count_the_rest(
            self, caplog: pytest.LogCaptureFixture) -> None:
        """10,000 accept errors in a row: one line; after the interval one more, with the count."""
        now = [0.0]
        loop = asyncio.new_event_loop()
        try:
            httpguard.install_loop_error_handler(loop, httpguard.Throttled(60, lambda: now[0]))
            error = OSError(24, "Too many open files")
            with caplog.at_level(logging.ERROR, "eximauthd.service"):
                for _ in range(10_000):
                    loop.call_exception_handler({"message": "socket.accept() out of system "
                                                 "resource", "exception": error})
                now[0] = 61.0
                loop.call_exception_handler({"message": "socket.accept() out of system "
                                             "resource", "exception": error})
        finally:
            loop.close()
        messages = [r.getMessage() for r in caplog.records]
        assert messages == [
            "socket.accept() out of system resource: Too many open files",
            "socket.accept() out of system resource: Too many open files (9999 more in the "
            "last 60s not logged)"]

    def test_connection_cap_keeps_three_quarters_for_the_socket(self) -> None:
        """The HTTP cap is at most a quarter of the limit (and 256), never below 8."""
        assert httpguard.http_connection_cap(1024) == 256
        assert httpguard.http_connection_cap(65536) == 256
        assert httpguard.http_connection_cap(128) == 32
        assert httpguard.http_connection_cap(16) == 8


def _http_pings(log: str) -> list[str]:
    """Decision lines for PINGs made over HTTP (the socket's PINGs still log theirs)."""
    return [x for x in log.splitlines() if "verb=PING" in x and "via=http" in x]


async def _get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        return int(status.split()[1])
    finally:
        writer.close()


class TestReadiness:
    """/readyz answers from a cached check, off the decision pool, without decision lines (F6)."""

    def test_readyz_flood_takes_no_worker_and_logs_no_decision(self, db_url: str) -> None:
        """40 AUTHs during a /readyz flood with max_pending=1: all yes; no PING decision line."""
        populate(db_url)
        extra = {"EXIMAUTHD_SERVICE_MAX_PENDING": "1", "EXIMAUTHD_SERVICE_WORKERS": "1"}
        with kit.running(db_url, extra_env=extra) as served:
            port = _port(served)
            line = kit.auth_line("alice@example.test", PASSWORD, ip="192.0.2.55")

            async def main() -> tuple[list[bytes], list[int]]:
                stop = asyncio.Event()
                statuses: list[int] = []

                async def flood() -> None:
                    while not stop.is_set():
                        got = await asyncio.gather(*(_get(port, "/readyz") for _ in range(30)),
                                                   return_exceptions=True)
                        statuses.extend(s for s in got if isinstance(s, int))

                task = asyncio.create_task(flood())
                await asyncio.sleep(0.3)
                loop = asyncio.get_running_loop()
                replies = []
                for _ in range(40):
                    replies.append(await loop.run_in_executor(None, served.ask, line))
                stop.set()
                await task
                return replies, statuses

            replies, statuses = asyncio.run(main())
            log = served.log()
        assert replies == [b"yes\n"] * 40
        assert len(statuses) >= 100
        assert set(statuses) == {200}
        assert _http_pings(log) == []
        assert log.count("client=192.0.2.55") == 40

    def test_readyz_turns_503_when_the_database_is_cut(self, mariadb_url: str) -> None:
        """MariaDB cut: /readyz 503 within a second or two, back to 200; one log line each way."""
        populate(mariadb_url)
        proxy = kit.TcpProxy(MARIADB_HOST, MARIADB_PORT)
        proxy.start()
        proxied = mariadb_url.replace(f":{MARIADB_PORT}/", f":{proxy.port}/")

        def wait_for(status: int) -> float:
            started = time.monotonic()
            while time.monotonic() - started < 10:
                if http_call(served, "GET", "/readyz")[0] == status:
                    return time.monotonic() - started
                time.sleep(0.1)
            raise AssertionError(f"/readyz never answered {status}")

        async def flood(port: int) -> list[int]:
            return list(await asyncio.gather(*(_get(port, "/readyz") for _ in range(50))))

        try:
            with kit.running(proxied) as served:
                assert http_call(served, "GET", "/readyz") == (200, {"status": "ready",
                                                                 "reason": "ready"})
                proxy.stop()
                assert wait_for(503) < 5
                assert set(asyncio.run(flood(_port(served)))) == {503}
                assert served.ask(b"PING\n") == b"defer database-unavailable\n"
                proxy.start()
                assert wait_for(200) < 5
                log = served.log()
        finally:
            proxy.stop()
        assert log.count("readiness: unavailable") == 1
        assert log.count("readiness: ready again") == 1
        assert _http_pings(log) == []


def _metrics(served: kit.Served) -> bytes:
    with socket.create_connection(("127.0.0.1", _port(served)), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).partition(b"\r\n\r\n")[2]


class TestHttpWork:
    """What one HTTP connection, and all of HTTP, can make the shared event loop do (review 2)."""

    def test_client_that_does_not_read_its_answers_is_disconnected(self,
                                                                   sqlite_url: str) -> None:
        """400 pipelined requests, nothing read: the connection is cut within the deadline."""
        populate(sqlite_url)
        with kit.running(sqlite_url) as served:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", _port(served)))
            with contextlib.closing(sock):
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 400)
                time.sleep(httpguard.REQUEST_DEADLINE_S + 3)  # not reading meanwhile
                assert _closed_by_peer(sock, within=5)
            assert served.ask(b"PING\n") == b"yes\n"

    def test_last_request_on_a_connection_closes_it(self, sqlite_url: str) -> None:
        """N+1 pipelined /healthz on one connection: N answers, the last says close, then EOF."""
        populate(sqlite_url)
        n = httpguard.MAX_REQUESTS_PER_CONNECTION
        with kit.running(sqlite_url) as served, \
                socket.create_connection(("127.0.0.1", _port(served)), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * (n + 1))
            chunks = []
            while chunk := sock.recv(65536):  # EOF: the server closed
                chunks.append(chunk)
        data = b"".join(chunks)
        assert data.count(b"HTTP/1.1 200") == n
        assert data.lower().count(b"connection: close") == 1

    def test_over_the_request_budget_connections_close_and_the_socket_answers(
            self, sqlite_url: str) -> None:
        """A flood of 1,500 requests: some connections closed unanswered; PING stays yes."""
        populate(sqlite_url)
        with kit.running(sqlite_url) as served:
            port = _port(served)

            async def one() -> int:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(), 15)  # to EOF
                    return data.count(b"HTTP/1.1 200")
                except (OSError, TimeoutError):
                    return 0
                finally:
                    writer.close()

            async def flood() -> tuple[list[int], list[bytes]]:
                loop = asyncio.get_running_loop()
                tasks = [asyncio.create_task(one()) for _ in range(30)]
                await asyncio.sleep(0.2)
                pings = [await loop.run_in_executor(None, lambda: served.ask(b"PING\n",
                                                                             timeout=5))
                         for _ in range(3)]
                return list(await asyncio.gather(*tasks)), pings

            answered, pings = asyncio.run(flood())
            time.sleep(1.5)  # the budget refills, the cached /metrics expires
            text = _metrics(served).decode()
            log = served.log()
        assert pings == [b"yes\n"] * 3
        assert sum(answered) < 30 * 50  # some requests never ran
        assert 'eximauthd_http_refused_total{reason="budget"}' in text
        assert log.count("closing connections without an answer") == 1

    def test_metrics_are_rendered_at_most_once_a_second(self, sqlite_url: str) -> None:
        """Within a second /metrics is the same text though a PING was counted; later it shows."""
        populate(sqlite_url)
        with kit.running(sqlite_url) as served:
            for _ in range(5):
                started = time.monotonic()
                first = _metrics(served)
                assert served.ask(b"PING\n") == b"yes\n"
                second = _metrics(served)
                if time.monotonic() - started < 0.5:
                    break
            else:
                pytest.skip("machine too slow to fetch /metrics twice within half a second")
            assert second == first
            time.sleep(1.2)
            assert _metrics(served) != first
