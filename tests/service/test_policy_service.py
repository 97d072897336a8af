"""The Postfix policy front end of a real ``eximauthd serve``, on SQLite and MariaDB.

Requests carry the exact attribute set Postfix 3.7 sends at RCPT TO (servicekit); the real
Postfix in front of it is in tests/postfix.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from eximauthd.core.policyproto import DEFER_TEXT, DUNNO, RATE_TEXT, REJECT_TEXT

from .. import servicekit as kit
from ..servicekit import POSTFIX_ATTRIBUTES, PolicyClient, policy_request
from ..support import MARIADB_HOST, MARIADB_PORT, populate, rate_env

ALICE = "alice@example.test"
DUNNO_REPLY = f"action={DUNNO}"
REJECT_REPLY = f"action={REJECT_TEXT}"
DEFER_REPLY = f"action={DEFER_TEXT}"
RATE_REPLY = f"action={RATE_TEXT}"


@dataclass
class Front:
    """A running service with its policy socket and loopback TCP port."""

    served: kit.Served
    path: str
    port: int

    def connect(self, tcp: bool = False, timeout: float = 10.0) -> PolicyClient:
        return PolicyClient(("127.0.0.1", self.port) if tcp else self.path, timeout)


@contextlib.contextmanager
def _front(db_url: str, **extra: str) -> Iterator[Front]:
    base = Path(tempfile.mkdtemp(prefix="eadp-", dir="/tmp"))
    path, port = str(base / "policy.sock"), kit.free_port()
    env = kit.policy_env(path, f"127.0.0.1:{port}") | extra
    try:
        with kit.running(db_url, extra_env=env) as served:
            yield Front(served, path, port)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def front(db_url: str) -> Iterator[Front]:
    """A service on a populated database, at most 2 messages per user and hour."""
    populate(db_url)
    with _front(db_url, **rate_env(messages="2/1h")) as running:
        yield running


# (sasl_username, sender) -> the reply; alice may send as @partner.test (populate)
CASES = [
    (ALICE, ALICE, DUNNO_REPLY),
    ("ALICE@Example.Test", ALICE, DUNNO_REPLY),
    (ALICE, "Alice@EXAMPLE.test", DUNNO_REPLY),
    (ALICE, "sales@partner.test", DUNNO_REPLY),                  # grant @partner.test
    (ALICE, "bob@example.test", DUNNO_REPLY),                    # same domain, not strict
    (ALICE, "ceo@bank.test", REJECT_REPLY),                      # foreign
    (ALICE, "alice@examp1e.test", REJECT_REPLY),                 # look-alike domain
    (ALICE, "alice@example.test.evil.test", REJECT_REPLY),
    (ALICE, "alice@ex\u0430mple.test", REJECT_REPLY),                 # Cyrillic a (U+0430)
    (ALICE, "", REJECT_REPLY),                                   # null sender
    ("bob@example.test", "sales@partner.test", REJECT_REPLY),    # the grant is alice's
    ("", "ceo@bank.test", DUNNO_REPLY),                          # not logged in: Postfix decides
    ("", "", DUNNO_REPLY),
]


class TestAnswers:
    def test_relay_rule_on_socket_and_tcp(self, front: Front) -> None:
        """Each login/sender pair gets the relay rule's action, many requests on one
        connection (as a Postfix smtpd process keeps it); TCP is the same front end."""
        with front.connect() as client:
            for login, sender, expected in CASES:
                # One message: the limit of two messages an hour is not reached.
                assert client.ask(policy_request(login, sender)) == expected, (login, sender)
        with front.connect(tcp=True) as client:
            for login, sender, expected in CASES[-4:]:
                assert client.ask(policy_request(login, sender)) == expected, (login, sender)

    def test_decision_lines_name_the_front_end(self, front: Front) -> None:
        """One decision line per authenticated request, via=postfix, the instance as txn."""
        with front.connect() as client:
            assert client.ask(policy_request(ALICE, "ceo@bank.test", instance="ab.c1")) == \
                REJECT_REPLY
        log = front.served.log()
        assert (f"verb=RELAY user={ALICE} sender=ceo@bank.test rcpt=someone@remote.test "
                "client=192.0.2.10 txn=pf.ab.c1 result=no reason=sender-mismatch") in log
        assert "via=postfix" in log
        _, metrics = kit.http_call(front.served, "GET", "/metrics")
        assert 'eximauthd_requests_total{result="no",transport="postfix",verb="RELAY"} 1.0' \
            in metrics

    def test_message_counts_once_per_instance(self, front: Front) -> None:
        """Two messages of three recipients each pass; a third message is deferred, and so
        is every recipient of it, while other users are untouched."""
        with front.connect() as client:
            for message in ("m1", "m2"):
                for rcpt in range(3):
                    assert client.ask(policy_request(
                        ALICE, ALICE, f"r{rcpt}@remote.test", instance=message)) == DUNNO_REPLY
            for rcpt in range(2):
                assert client.ask(policy_request(
                    ALICE, ALICE, f"r{rcpt}@remote.test", instance="m3")) == RATE_REPLY
            assert client.ask(policy_request("bob@example.test", "bob@example.test",
                                             instance="m3")) == DUNNO_REPLY

    @pytest.mark.parametrize("state", ["DATA", "END-OF-MESSAGE", "VRFY"])
    def test_other_stages_defer_an_authenticated_client(self, front: Front,
                                                        state: str) -> None:
        """Only RCPT names one recipient: elsewhere a login gets a temporary refusal (the
        misplaced check shows), an anonymous client DUNNO."""
        with front.connect() as client:
            assert client.ask(policy_request(ALICE, ALICE, protocol_state=state)) == \
                DEFER_REPLY
            assert client.ask(policy_request("", ALICE, protocol_state=state)) == DUNNO_REPLY

    def test_pipelined_requests_are_answered_in_order(self, front: Front) -> None:
        """Several requests in one write get their replies in the same order."""
        pairs = [(ALICE, ALICE), (ALICE, "x@bank.test"), ("", "y@bank.test"),
                 (ALICE, "sales@partner.test"), (ALICE, "")] * 4
        with front.connect() as client:
            client.send(b"".join(policy_request(u, s, instance="p") for u, s in pairs))
            replies = [client.read_reply() for _ in pairs]
        expected = {ALICE: DUNNO_REPLY, "x@bank.test": REJECT_REPLY, "y@bank.test": DUNNO_REPLY,
                    "sales@partner.test": DUNNO_REPLY, "": REJECT_REPLY}
        assert replies == [expected[s] for _, s in pairs]

    def test_many_connections_at_once(self, front: Front) -> None:
        """Sixteen smtpd processes, each with its own connection and several requests."""
        results: dict[int, list[str | None]] = {}

        def one(index: int) -> None:
            sender = ALICE if index % 2 else "ceo@bank.test"
            with front.connect() as client:
                results[index] = [client.ask(policy_request(ALICE, sender, instance="c"))
                                  for _ in range(5)]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == {i: [DUNNO_REPLY if i % 2 else REJECT_REPLY] * 5 for i in range(16)}


    def test_client_that_never_reads_is_cut(self, front: Front) -> None:
        """A client that writes requests and never reads its replies is disconnected once
        the unread replies pass the cap: the server does not buffer them without bound."""
        count = 100_000  # 2.9 MB of requests, 1.4 MB of replies: far over the cap
        with front.connect(timeout=30) as client:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                client.send(b"request=smtpd_access_policy\n\n" * count)
            replies = 0
            with contextlib.suppress(ConnectionResetError):
                while client.read_reply() is not None:
                    replies += 1
        assert replies < count
        assert "reason=replies-unread" in front.served.log()
        with front.connect() as client:  # the others are served as before
            assert client.ask(policy_request(ALICE, ALICE)) == DUNNO_REPLY


@pytest.mark.mariadb
def test_database_down_defers_never_dunno(mariadb_url: str) -> None:
    """A grant lookup that cannot be made is DEFER_IF_PERMIT, never DUNNO; back: DUNNO."""
    populate(mariadb_url)
    proxy = kit.TcpProxy(MARIADB_HOST, MARIADB_PORT)
    proxy.start()
    try:
        url = mariadb_url.replace(f":{MARIADB_PORT}/", f":{proxy.port}/")
        with _front(url) as front, front.connect() as client:
            granted = policy_request(ALICE, "sales@partner.test")
            assert client.ask(granted) == DUNNO_REPLY
            proxy.stop()
            assert client.ask(granted) == DEFER_REPLY
            assert client.ask(policy_request(ALICE, "ceo@bank.test")) == DEFER_REPLY
            assert "result=defer reason=database-unavailable" in front.served.log()
            proxy.start()
            assert client.ask(granted) == DUNNO_REPLY
    finally:
        proxy.stop()


# --- fuzz against the running server -------------------------------------------------------

_NAMES = [*POSTFIX_ATTRIBUTES, "x", "", "sasl_username", "sender", "request"]
_VALUES = ["", ALICE, "ceo@bank.test", "smtpd_access_policy", "RCPT", "=", "a=b", "é",
           "\x00", "\x01", "\r", "\t", "x" * 5000, "x" * 40000]


def _random_request(rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    lines = []
    for _ in range(rng.randrange(0, 40 if rng.random() < 0.9 else 150)):
        if rng.random() < 0.1:
            lines.append(rng.choice(_VALUES))  # no '='
        else:
            lines.append(f"{rng.choice(_NAMES)}={rng.choice(_VALUES)}")
    body = "\n".join(lines).encode("utf-8", "surrogatepass")
    return body + rng.choice([b"\n\n", b"\n\n", b"\n", b""])  # sometimes no empty line


def test_fuzz_never_crashes_only_documented_actions(sqlite_url: str) -> None:
    """Random lines and bytes, huge values, requests without their empty line, many per
    connection, split at random points: every reply is one of the documented actions and
    the server keeps answering."""
    populate(sqlite_url)
    rng = random.Random(19)  # reproducible noise
    allowed = {DUNNO_REPLY, REJECT_REPLY, DEFER_REPLY, RATE_REPLY}
    answered = 0
    with _front(sqlite_url, EXIMAUTHD_RATELIMIT_ENABLED="false") as front:
        for _ in range(40):
            with front.connect(timeout=15) as client:
                stream = b"".join(_random_request(rng) for _ in range(rng.randrange(1, 12)))
                stream += policy_request(ALICE, "ceo@bank.test", instance="z")
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    while stream:  # split writes: the server must reassemble lines
                        cut = rng.randrange(1, 4096)
                        client.send(stream[:cut])
                        stream = stream[cut:]
                    client.sock.shutdown(socket.SHUT_WR)
                replies = []
                with contextlib.suppress(ConnectionResetError):
                    while (reply := client.read_reply()) is not None:
                        replies.append(reply)
                assert set(replies) <= allowed, replies
                answered += len(replies)
        assert answered > 40  # most streams end in a readable request
        with front.connect() as client:
            for _ in range(200):  # many requests on one connection
                assert client.ask(policy_request(ALICE, "ceo@bank.test")) == REJECT_REPLY
            assert client.ask(policy_request(ALICE, ALICE)) == DUNNO_REPLY
        assert front.served.process.poll() is None
        log = front.served.log()
        assert "Traceback" not in log
        assert "internal error" not in log
