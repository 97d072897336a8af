"""The Dovecot auth-client front end of a real ``eximauthd serve``, on SQLite and MariaDB."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .. import servicekit as kit
from ..servicekit import DovecotClient, b64, plain_resp
from ..support import MARIADB_HOST, MARIADB_PORT, PASSWORD, populate, wait_for

ALICE = "alice@example.test"


@dataclass
class Front:
    """A running service with its Dovecot socket and loopback TCP port."""

    served: kit.Served
    path: str
    port: int

    def connect(self, tcp: bool = False, **kwargs: object) -> DovecotClient:
        address: str | tuple[str, int] = ("127.0.0.1", self.port) if tcp else self.path
        return DovecotClient(address, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def front(db_url: str) -> Iterator[Front]:
    """A service on a populated database with [dovecot_auth] on a socket and on TCP."""
    populate(db_url)
    with _front(db_url) as running:
        yield running


@contextlib.contextmanager
def _front(db_url: str, **extra: str) -> Iterator[Front]:
    base = Path(tempfile.mkdtemp(prefix="eadd-", dir="/tmp"))
    path, port = str(base / "dovecot.sock"), kit.free_port()
    env = kit.dovecot_env(path, f"127.0.0.1:{port}") | extra
    try:
        with kit.running(db_url, extra_env=env) as served:
            yield Front(served, path, port)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# (mechanism, how the credentials go, user, password, authzid) -> the answer
CASES = [
    (ALICE, PASSWORD, "", f"OK\t1\tuser={ALICE}"),
    ("ALICE@Example.Test", PASSWORD, "", f"OK\t1\tuser={ALICE}"),
    (ALICE, PASSWORD, ALICE, f"OK\t1\tuser={ALICE}"),
    (ALICE, "wrong", "", "FAIL\t1"),
    (ALICE, "", "", "FAIL\t1"),
    ("", "", "", "FAIL\t1"),
    ("", PASSWORD, "", "FAIL\t1"),
    ("nobody@example.test", "", "", "FAIL\t1"),
    ("nobody@example.test", PASSWORD, "", "FAIL\t1"),
    ("carol@example.test", PASSWORD, "", "FAIL\t1"),                 # disabled
    (ALICE, PASSWORD, "bob@example.test", "FAIL\t1"),                # acting as someone else
    ("bob@example.test", PASSWORD, ALICE, "FAIL\t1"),
    ("alice@example.test' OR '1'='1", PASSWORD, "", "FAIL\t1"),
]


def _authenticate(client: DovecotClient, how: str, user: str, password: str,
                  authzid: str) -> str | None:
    """One authentication, the way *how* names: PLAIN or LOGIN, with or without an
    initial response, as Exim (resp= always) or Postfix (resp= left out) send it."""
    mech, style = how.split("-", 1)
    if mech == "PLAIN":
        resp = plain_resp(user, password, authzid)
        if style == "ir":
            return client.auth(1, "PLAIN", resp)
        assert client.auth(1, "PLAIN", "" if style == "exim" else None) == "CONT\t1\t"
        client.send(f"CONT\t1\t{resp}\n")
        return client.read_line()
    if style == "ir":
        # An empty initial response is "=" (RFC 4954); "resp=" means none.
        assert client.auth(1, "LOGIN", b64(user) or "=") == "CONT\t1\tUGFzc3dvcmQ6"
    else:
        assert client.auth(1, "LOGIN", "" if style == "exim" else None) == "CONT\t1\tVXNlcm5hbWU6"
        client.send(f"CONT\t1\t{b64(user)}\n")
        assert client.read_line() == "CONT\t1\tUGFzc3dvcmQ6"
    client.send(f"CONT\t1\t{b64(password)}\n")
    return client.read_line()


class TestAnswers:
    """Every mechanism and shape of request gets the credential check's answer."""

    def test_only_the_right_password_is_ok(self, front: Front) -> None:
        """OK with the canonical login for the right password, FAIL for everything else:
        PLAIN and LOGIN, with an initial response, without one as Exim and as Postfix send
        it (one service for all of them: its start is the slow part)."""
        for how in ("PLAIN-ir", "PLAIN-exim", "PLAIN-postfix", "LOGIN-ir", "LOGIN-exim",
                    "LOGIN-postfix"):
            for user, password, authzid, expected in CASES:
                if how.startswith("LOGIN") and authzid:
                    continue  # LOGIN has no authzid
                with front.connect() as client:
                    assert _authenticate(client, how, user, password, authzid) == expected, \
                        (how, user)

    def test_handshake_and_answers_on_socket_and_tcp(self, front: Front) -> None:
        """Unprompted, MECH before SPID, PLAIN and LOGIN flagged plaintext; TCP is the same
        front end as the socket."""
        for tcp in (False, True):
            with front.connect(tcp=tcp, opening=False) as client:
                kinds = [line.split("\t")[0] for line in client.handshake]
                assert kinds == ["VERSION", "MECH", "MECH", "SPID", "CUID", "COOKIE"]
                assert client.handshake[:3] == ["VERSION\t1\t2", "MECH\tPLAIN\tplaintext",
                                                "MECH\tLOGIN\tplaintext"]
            with front.connect(tcp=tcp) as client:
                assert client.auth(1, "PLAIN", plain_resp(ALICE, PASSWORD)) == \
                    f"OK\t1\tuser={ALICE}"

    def test_decision_lines_name_the_front_end_and_no_password(self, front: Front) -> None:
        """via=dovecot, the reason, never the password; metrics count the transport."""
        with front.connect() as client:
            assert client.auth(1, "PLAIN", plain_resp(ALICE, "Wr0ng-secret")) == "FAIL\t1"
            assert client.auth(2, "PLAIN", plain_resp(ALICE, PASSWORD, "bob@example.test")
                               ) == "FAIL\t2"
        log = front.served.log()
        assert f"verb=AUTH user={ALICE} mech=PLAIN client=192.0.2.10 result=no " \
               "reason=bad-password" in log
        assert "verb=AUTH mech=PLAIN client=192.0.2.10 result=no reason=authzid-mismatch " \
               "via=dovecot" in log
        assert "Wr0ng-secret" not in log
        assert PASSWORD not in log
        _, metrics = kit.http_call(front.served, "GET", "/metrics")
        assert 'eximauthd_requests_total{result="no",transport="dovecot",verb="AUTH"} 2.0' \
            in metrics


    def test_throttle_is_shared_with_the_socket(self, front: Front) -> None:
        """Wrong passwords over the readsocket socket lock the user out over the Dovecot
        protocol too (one throttle): the right password then gets FAIL, logged throttled."""
        ip = "192.0.2.99"  # a network bob never logged in from
        for attempt in range(10):  # ten different ones: a repeated wrong password counts once
            assert front.served.ask(kit.auth_line("bob@example.test", f"wrong-{attempt}", ip)
                                    ) == b"no\n"
        with front.connect() as client:
            assert client.auth(1, "PLAIN", plain_resp("bob@example.test", PASSWORD),
                               rip=ip) == "FAIL\t1"
        assert any("user=bob@example.test" in line and "reason=throttled-" in line
                   and line.endswith("via=dovecot") for line in front.served.log().splitlines())


class TestConnections:
    """Many requests per connection (Postfix), many connections at once (Exim)."""

    def test_many_ids_on_one_connection(self, front: Front) -> None:
        """Ids 1..20 in turn, right and wrong passwords, each its own answer."""
        with front.connect() as client:
            for request_id in range(1, 21):
                password = PASSWORD if request_id % 2 else "wrong"
                expected = (f"OK\t{request_id}\tuser={ALICE}" if request_id % 2
                            else f"FAIL\t{request_id}")
                assert client.auth(request_id, "PLAIN", plain_resp(ALICE, password)) == \
                    expected

    def test_pipelined_requests_each_get_their_answer(self, front: Front) -> None:
        """Several AUTHs in one write: every id answered once, in any order."""
        with front.connect() as client:
            client.send("".join(
                f"AUTH\t{i}\tPLAIN\tservice=smtp\tresp="
                f"{plain_resp(ALICE, PASSWORD if i % 2 else 'x')}\n" for i in range(1, 9)))
            replies = {client.read_line() for _ in range(8)}
        assert replies == {f"OK\t{i}\tuser={ALICE}" if i % 2 else f"FAIL\t{i}"
                           for i in range(1, 9)}

    def test_many_connections_at_once(self, front: Front) -> None:
        """Sixteen clients in parallel, one AUTH each, as Exim processes do."""
        results: dict[int, str | None] = {}

        def one(index: int) -> None:
            with front.connect() as client:
                password = PASSWORD if index % 2 else "wrong"
                results[index] = client.auth(1, "PLAIN", plain_resp(ALICE, password))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == {i: f"OK\t1\tuser={ALICE}" if i % 2 else "FAIL\t1"
                           for i in range(16)}

    def test_interleaved_login_steps_stay_with_their_id(self, front: Front) -> None:
        """Two LOGINs open at once, their steps interleaved: each id is checked with its own
        username and password; OK names its own login (canonical), never the other's; a CONT
        for a finished or never opened id is FAIL, not a step of another."""
        with front.connect() as client:
            assert client.auth(1, "LOGIN", None) == "CONT\t1\tVXNlcm5hbWU6"
            assert client.auth(2, "LOGIN", None) == "CONT\t2\tVXNlcm5hbWU6"
            client.send(f"CONT\t2\t{b64('bob@example.test')}\n")
            assert client.read_line() == "CONT\t2\tUGFzc3dvcmQ6"
            client.send(f"CONT\t1\t{b64('ALICE@Example.Test')}\n")
            assert client.read_line() == "CONT\t1\tUGFzc3dvcmQ6"
            client.send(f"CONT\t2\t{b64('wrong')}\n")
            assert client.read_line() == "FAIL\t2"
            client.send(f"CONT\t1\t{b64(PASSWORD)}\n")
            assert client.read_line() == f"OK\t1\tuser={ALICE}"
            for stale in (1, 2, 3):  # done, done, never opened
                client.send(f"CONT\t{stale}\t{b64(PASSWORD)}\n")
                assert client.read_line() == f"FAIL\t{stale}"

    def test_a_protocol_error_closes_only_that_connection(self, front: Front) -> None:
        """Garbage closes its connection without a reply; the next one works."""
        with front.connect() as bad:
            bad.send(b"AUTH\t1\tPLAIN\tresp=\x01\n")
            assert bad.read_line() is None
        with front.connect() as client:
            assert client.auth(1, "PLAIN", plain_resp(ALICE, PASSWORD)) == f"OK\t1\tuser={ALICE}"
        assert "verb=BAD result=close reason=control-character via=dovecot" in \
            front.served.log()


@pytest.mark.mariadb
def test_database_down_closes_never_fails_never_ok(mariadb_url: str) -> None:
    """A check that cannot decide ends the connection (the MTA answers 4xx); back: OK."""
    populate(mariadb_url)
    proxy = kit.TcpProxy(MARIADB_HOST, MARIADB_PORT)
    proxy.start()
    try:
        url = mariadb_url.replace(f":{MARIADB_PORT}/", f":{proxy.port}/")
        with _front(url) as front:
            with front.connect() as client:
                assert client.auth(1, "PLAIN", plain_resp(ALICE, PASSWORD)) == \
                    f"OK\t1\tuser={ALICE}"
            proxy.stop()
            for password in (PASSWORD, "wrong"):
                with front.connect() as client:
                    assert client.auth(1, "PLAIN", plain_resp(ALICE, password)) is None
            assert "result=defer reason=database-unavailable" in front.served.log()
            proxy.start()
            with front.connect() as client:
                assert client.auth(1, "PLAIN", plain_resp(ALICE, PASSWORD)) == \
                    f"OK\t1\tuser={ALICE}"
    finally:
        proxy.stop()


# --- fuzz against the running server -------------------------------------------------------

_TOKENS = ["AUTH", "CONT", "CANCEL", "CPID", "VERSION", "1", "2", "7", "0", "PLAIN", "LOGIN",
           "plain", "resp=", "resp==", "resp=AAAA", "rip=::1", "rip=x", "secured", "nologin",
           "resp=" + plain_resp(ALICE, ""), "resp=" + plain_resp("", ""),
           "resp=" + plain_resp(ALICE, "wrong"), "resp=" + plain_resp(ALICE, PASSWORD, "bob@x"),
           b64(ALICE), b64(""), "", "é", "\x00", "\x01", "\r", "=" * 3]


def _random_line(rng: random.Random) -> bytes:
    if rng.random() < 0.4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    return "\t".join(rng.choice(_TOKENS) for _ in range(rng.randrange(1, 9))).encode()


def test_fuzz_never_crashes_never_ok(sqlite_url: str) -> None:
    """Random lines and bytes, split at random points, many ids and abandoned ones: no reply
    is OK (the right password is never sent), the server keeps answering, nothing leaks."""
    populate(sqlite_url)
    rng = random.Random(19)  # reproducible noise
    with _front(sqlite_url) as front:
        for _ in range(60):
            opening = rng.random() < 0.8
            with front.connect(opening=opening, timeout=5) as client:
                stream = b"".join(_random_line(rng) + b"\n" for _ in range(rng.randrange(1, 30)))
                if rng.random() < 0.2:
                    stream += b"A" * rng.choice([8191, 8192, 20000])  # no newline, over the cap
                replies = []
                # A closed connection (the server's answer to garbage) ends the sending.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    while stream:  # split reads: the server must reassemble lines
                        cut = rng.randrange(1, 64)
                        client.send(stream[:cut])
                        stream = stream[cut:]
                    client.sock.shutdown(socket.SHUT_WR)
                with contextlib.suppress(ConnectionResetError):
                    while (line := client.read_line()) is not None:
                        replies.append(line)
                for line in replies:
                    assert not line.startswith("OK"), line
                    assert line.split("\t")[0] in {"CONT", "FAIL"}, line
        # Abandoned LOGINs on one connection: the cap drops them, the connection stays.
        with front.connect() as client:
            for request_id in range(1, 200):
                assert client.auth(request_id, "LOGIN", "") == f"CONT\t{request_id}\tVXNlcm5hbWU6"
            assert client.auth(500, "PLAIN", plain_resp(ALICE, PASSWORD)) == \
                f"OK\t500\tuser={ALICE}"
        assert front.served.process.poll() is None
        assert "Traceback" not in front.served.log()
        assert "internal error" not in front.served.log()


def test_live_dovecot_socket_is_not_stolen_and_stop_cleans_up(sqlite_url: str) -> None:
    """A second instance on the same Dovecot socket exits 2 with one line naming the key and
    leaves nothing behind; SIGTERM removes the socket; a stale one is replaced."""
    populate(sqlite_url)
    with _front(sqlite_url) as first:
        second = kit.start_service(sqlite_url, extra_env=kit.dovecot_env(first.path),
                                   wait=False)
        assert second.process.wait(30) == 2
        errors = [line for line in second.log().splitlines() if "error" in line]
        assert errors == [f"eximauthd: error: dovecot_auth.path: another process is serving "
                          f"{first.path}; not stealing it"]
        assert not os.path.exists(second.socket_path)
        shutil.rmtree(Path(second.socket_path).parent, ignore_errors=True)
        with first.connect() as client:
            assert client.auth(1, "PLAIN", plain_resp(ALICE, PASSWORD)) == f"OK\t1\tuser={ALICE}"
        assert first.served.stop() == 0
        assert not os.path.exists(first.path)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(first.path)  # a leftover socket file nobody listens on
        stale.close()
        third = kit.start_service(sqlite_url, extra_env=kit.dovecot_env(first.path))
        try:
            with first.connect() as client:
                assert client.auth(1, "PLAIN", plain_resp(ALICE, PASSWORD)) == \
                    f"OK\t1\tuser={ALICE}"
        finally:
            assert third.stop() == 0
            shutil.rmtree(Path(third.socket_path).parent, ignore_errors=True)


def test_a_client_that_never_reads_is_disconnected(sqlite_url: str) -> None:
    """Requests flooded without reading a reply: the service stops queueing replies for it
    and cuts the connection instead of growing its buffer; other clients are served."""
    populate(sqlite_url)
    with _front(sqlite_url) as front:
        flood = "".join(f"AUTH\t{i}\tLOGIN\tservice=smtp\n" for i in range(1, 200_001))
        with front.connect() as client, \
                contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.send(flood)
        assert wait_for(lambda: "reason=replies-unread via=dovecot" in front.served.log())
        with front.connect() as client:
            assert client.auth(1, "PLAIN", plain_resp(ALICE, PASSWORD)) == f"OK\t1\tuser={ALICE}"
