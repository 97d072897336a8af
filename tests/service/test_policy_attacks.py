"""A hostile client of the Postfix policy front end of a real ``eximauthd serve``: requests
that hide a login, repeat or split attributes, or queue behind a database lookup, answered on
the event loop or by a worker.  Never DUNNO for a login whose request could not be read."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from ..servicekit import policy_request
from ..support import populate, rate_env
from .test_policy_service import DEFER_REPLY, DUNNO_REPLY, REJECT_REPLY, Front, _front

ALICE = "alice@example.test"
FOREIGN = "ceo@bank.test"


@pytest.fixture
def front(db_url: str) -> Iterator[Front]:
    populate(db_url)
    with _front(db_url, **rate_env(messages="50/1h")) as running:
        yield running


def _with_lines(request: bytes, before: bytes = b"", after: bytes = b"") -> bytes:
    """*request* with lines added at its start and before its empty line."""
    assert request.endswith(b"\n\n")
    return before + request[:-1] + after + b"\n"


EMPTY_LOGIN_AFTER = _with_lines(policy_request(ALICE, FOREIGN), after=b"sasl_username=\n")

# One write each: a login whose request also says "not logged in", or a stage repeated.
HIDDEN = [
    pytest.param(EMPTY_LOGIN_AFTER, id="empty-login-after"),
    pytest.param(_with_lines(policy_request(ALICE, FOREIGN), before=b"sasl_username=\n"),
                 id="empty-login-before"),
    pytest.param(_with_lines(policy_request(ALICE, FOREIGN), after=b"sender=" + ALICE.encode()
                             + b"\n"), id="second-sender"),
    pytest.param(_with_lines(policy_request(ALICE, FOREIGN), before=b"protocol_state=DATA\n"),
                 id="second-state"),
    pytest.param(_with_lines(policy_request(ALICE, FOREIGN),
                             after=b"ccert_subject=" + b"x" * 5000 + b"\n"), id="over-long-line"),
    pytest.param(_with_lines(policy_request(ALICE, FOREIGN), after=b"sender=\xff\n"),
                 id="second-sender-not-utf8"),
]


@pytest.mark.parametrize("request_bytes", HIDDEN)
def test_an_ambiguous_login_request_is_deferred_never_dunno(front: Front,
                                                            request_bytes: bytes) -> None:
    """Whole in one write (the loop's fast path) or one byte at a time: a temporary refusal."""
    with front.connect() as client:
        assert client.ask(request_bytes) == DEFER_REPLY
        for byte in request_bytes:
            client.send(bytes([byte]))
        assert client.read_reply() == DEFER_REPLY
        assert client.ask(policy_request(ALICE, ALICE)) == DUNNO_REPLY  # still in step


def test_loop_answers_wait_behind_a_database_lookup(front: Front) -> None:
    """A request the loop settles (unauthenticated, malformed, refused, same address) written
    right behind one that needs the grants table is answered after it, in order, whether the
    stream comes in one write or in small pieces."""
    stream = [
        (policy_request(ALICE, "sales@partner.test"), DUNNO_REPLY),  # grant: a worker's
        (policy_request("", FOREIGN), DUNNO_REPLY),  # not logged in: Postfix decides
        (policy_request(ALICE, FOREIGN), REJECT_REPLY),
        (EMPTY_LOGIN_AFTER, DEFER_REPLY),
        (policy_request(ALICE, "bob@example.test"), DUNNO_REPLY),  # same domain
        (policy_request("bob@example.test", "sales@partner.test"), REJECT_REPLY),  # a worker's
        (policy_request(ALICE, ALICE), DUNNO_REPLY),
    ]
    data = b"".join(request for request, _ in stream) * 3
    expected = [reply for _, reply in stream] * 3
    for piece in (len(data), 7):
        with front.connect() as client:
            for start in range(0, len(data), piece):
                client.send(data[start:start + piece])
            assert [client.read_reply() for _ in expected] == expected
    log = front.served.log()
    assert "Traceback" not in log
    assert "internal error" not in log


def test_replies_end_with_the_last_whole_request(front: Front) -> None:
    """A client that writes requests and a cut-off one, then closes its side, gets the replies
    of the whole ones and nothing for the cut one."""
    with front.connect() as client:
        client.send(policy_request(ALICE, "sales@partner.test") + policy_request(ALICE, FOREIGN)
                    + policy_request(ALICE, FOREIGN)[:-1])
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_WR)
        replies = []
        while (reply := client.read_reply()) is not None:
            replies.append(reply)
    assert replies == [DUNNO_REPLY, REJECT_REPLY]
