"""The socket line protocol: pure parsing and formatting."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximauthd.decision import Decision, Result
from eximauthd.errors import ProtocolError
from eximauthd.protocol import (
    MAX_REQUEST_BYTES,
    AuthRequest,
    PingRequest,
    RelayRequest,
    format_reply,
    is_valid_reply,
    parse_request,
)


def b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8", "surrogateescape")).decode()


class TestParse:
    """Valid lines parse to request values."""

    def test_auth(self) -> None:
        """AUTH carries mechanism, decoded user and password, client ip."""
        line = f"AUTH PLAIN {b64('alice@example.test')} {b64('p w')} 192.0.2.1\n".encode()
        assert parse_request(line) == AuthRequest("PLAIN", "alice@example.test", "p w",
                                                  "192.0.2.1")

    def test_relay_with_ipv6(self) -> None:
        """RELAY carries id, sender, recipient; IPv6 literals as Exim writes them."""
        line = f"RELAY {b64('a@x.test')} {b64('b@x.test')} {b64('c@y.test')} 2001:db8::1\n"
        assert parse_request(line.encode()) == RelayRequest("a@x.test", "b@x.test", "c@y.test",
                                                            "2001:db8::1")

    def test_ping(self) -> None:
        """PING has no fields."""
        assert parse_request(b"PING\n") == PingRequest()

    @pytest.mark.parametrize(("line", "expected"), [
        (b"RELAY    \n", RelayRequest("", "", "", "")),
        (f"RELAY  {b64('s@x.test')} {b64('r@y.test')} \n".encode(),
         RelayRequest("", "s@x.test", "r@y.test", "")),
        (f"RELAY {b64('a@x.test')}  {b64('r@y.test')} ::1\n".encode(),
         RelayRequest("a@x.test", "", "r@y.test", "::1")),
        (b"AUTH LOGIN   \n", AuthRequest("LOGIN", "", "", "")),
    ])
    def test_empty_fields_parse(self, line: bytes, expected: object) -> None:
        """Two spaces in a row are an empty value, as Exim sends an empty id or null sender."""
        assert parse_request(line) == expected

    def test_invalid_utf8_is_passed_on_not_rejected(self) -> None:
        """Bytes that are not UTF-8 survive (surrogate-escaped) for the checks to refuse."""
        raw = base64.b64encode(b"\xff\xfeuser").decode()
        request = parse_request(f"AUTH PLAIN {raw} {raw} \n".encode())
        assert isinstance(request, AuthRequest)
        assert request.username.encode("utf-8", "surrogateescape") == b"\xff\xfeuser"

    def test_password_masked_in_repr(self) -> None:
        """No repr or str of a request shows the password."""
        request = AuthRequest("PLAIN", "alice@example.test", "hunter2", "")
        assert "hunter2" not in repr(request)
        assert "hunter2" not in str(request)
        assert "alice@example.test" in repr(request)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"PING", "missing-newline"),
    (b"PING\r\n", "several-lines"),
    (b"PING\nPING\n", "several-lines"),
    (b"ping\n", "unknown-verb"),
    (b"QUIT\n", "unknown-verb"),
    (b" PING\n", "unknown-verb"),
    (b"PING \n", "wrong-field-count"),
    (b"AUTH PLAIN YQ== YQ==\n", "wrong-field-count"),
    (b"AUTH PLAIN YQ== YQ== 1.2.3.4 x\n", "wrong-field-count"),
    (b"AUTH plain YQ== YQ== 1.2.3.4\n", "unsupported-mechanism"),
    (b"AUTH CRAM-MD5 YQ== YQ== 1.2.3.4\n", "unsupported-mechanism"),
    (b"AUTH PLAIN YQ YQ== 1.2.3.4\n", "bad-base64"),
    (b"AUTH PLAIN YQ==\x00 YQ== 1.2.3.4\n", "not-ascii"),
    (b"RELAY a$b YQ== YQ== 1.2.3.4\n", "bad-base64"),
    (b"AUTH PLAIN YQ== YQ== 1.2.3.400\n", "bad-client-ip"),
    (b"AUTH PLAIN YQ== YQ== localhost\n", "bad-client-ip"),
    ("RELAY ä YQ== YQ== 1.2.3.4\n".encode(), "not-ascii"),
    (b"AUTH PLAIN YQ==\tYQ== YQ== 1.2.3.4\n", "not-ascii"),
    (b"PING\n" + b"x" * MAX_REQUEST_BYTES, "too-long"),
])
def test_malformed_requests_raise_protocol_error(data: bytes, reason: str) -> None:
    """Each malformation has a reason, and the message never quotes the request."""
    with pytest.raises(ProtocolError) as info:
        parse_request(data)
    assert info.value.reason == reason
    assert str(info.value) == reason


class TestReplies:
    """The three documented answers."""

    @pytest.mark.parametrize(("decision", "wire"), [
        (Decision.yes("ok"), b"yes\n"),
        (Decision.no("bad-password"), b"no\n"),
        (Decision.defer("database-unavailable"), b"defer database-unavailable\n"),
        (Decision.defer("two words\nand a newline"), b"defer two-words-and-a-newline\n"),
        (Decision.defer(""), b"defer unavailable\n"),
        (Decision.defer("x" * 200), b"defer " + b"x" * 64 + b"\n"),
    ])
    def test_format(self, decision: Decision, wire: bytes) -> None:
        """no carries no reason on the wire; defer reasons are sanitised and bounded."""
        assert format_reply(decision) == wire
        assert is_valid_reply(wire)

    @pytest.mark.parametrize("data", [b"yes", b"yes\n\n", b" yes\n", b"YES\n", b"no reason\n",
                                      b"defer\n", b"defer \n", b"maybe\n", b""])
    def test_invalid_replies_are_recognised(self, data: bytes) -> None:
        """Anything but one exact answer line is not a reply."""
        assert not is_valid_reply(data)


@given(st.binary(max_size=MAX_REQUEST_BYTES + 10))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    """Arbitrary input never raises anything but ProtocolError."""
    try:
        parse_request(data)
    except ProtocolError as exc:
        assert exc.reason


_ips = st.one_of(st.just(""), st.ip_addresses().map(str))


@given(user=st.text(), password=st.text(), ip=_ips, mech=st.sampled_from(["PLAIN", "LOGIN"]))
def test_auth_round_trip(user: str, password: str, ip: str, mech: str) -> None:
    """Whatever the values (NUL, spaces, newlines, quotes, unicode), they come back intact."""
    line = f"AUTH {mech} {b64(user)} {b64(password)} {ip}\n".encode()
    if len(line) > MAX_REQUEST_BYTES:
        return
    assert parse_request(line) == AuthRequest(mech, user, password, ip)


@given(values=st.tuples(st.text(), st.text(), st.text()), ip=_ips)
def test_relay_round_trip(values: tuple[str, str, str], ip: str) -> None:
    """RELAY values survive the trip too."""
    line = f"RELAY {' '.join(b64(v) for v in values)} {ip}\n".encode()
    if len(line) > MAX_REQUEST_BYTES:
        return
    assert parse_request(line) == RelayRequest(*values, ip)


@given(result=st.sampled_from(list(Result)), reason=st.text())
def test_every_formatted_reply_is_valid(result: Result, reason: str) -> None:
    """format_reply can only produce documented answers."""
    assert is_valid_reply(format_reply(Decision(result, reason)))
