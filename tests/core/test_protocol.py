"""The socket line protocol: pure parsing and formatting."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from eximauthd.core.decision import Decision, Reason, Result
from eximauthd.core.protocol import (
    MAX_REQUEST_BYTES,
    AuthRequest,
    ForgetRequest,
    PingRequest,
    RelayRequest,
    Request,
    format_reply,
    is_valid_reply,
    parse_client_ip,
    parse_request,
)
from eximauthd.errors import EximauthdError, ProtocolError

# The documented reasons of parse_request (docs/service.md, "Socket protocol").
REASONS = frozenset({
    "empty", "too-long", "missing-newline", "several-lines", "not-ascii", "unknown-verb",
    "wrong-field-count", "bad-base64", "unsupported-mechanism", "bad-client-ip",
    "bad-transaction",
})


def b64(value: str) -> str:
    """Encode *value* as Exim's ``${str2b64:...}`` would (lone surrogates stand for raw bytes)."""
    return base64.b64encode(value.encode("utf-8", "surrogateescape")).decode()


def auth_line(user: str, password: str, ip: str, mechanism: str = "PLAIN") -> bytes:
    return f"AUTH {mechanism} {b64(user)} {b64(password)} {ip}\n".encode()


def relay_line(authenticated_id: str, sender: str, recipient: str, ip: str) -> bytes:
    return f"RELAY {b64(authenticated_id)} {b64(sender)} {b64(recipient)} {ip}\n".encode()


class TestParseRequest:
    """Valid lines parse to request values."""

    def test_auth_line_parses_to_auth_request(self) -> None:
        """AUTH carries mechanism, decoded user and password, and the client ip."""
        line = auth_line("alice@example.test", "p w", "192.0.2.1")
        assert parse_request(line) == AuthRequest("PLAIN", "alice@example.test", "p w",
                                                  "192.0.2.1")

    def test_login_mechanism_is_accepted(self) -> None:
        """LOGIN is the second supported mechanism."""
        line = auth_line("alice@example.test", "pw", "", mechanism="LOGIN")
        assert parse_request(line) == AuthRequest("LOGIN", "alice@example.test", "pw", "")

    @pytest.mark.parametrize("ip", ["192.0.2.1", "::1", "2001:db8::1", "::ffff:192.0.2.1", ""])
    def test_relay_line_keeps_client_ip_as_exim_wrote_it(self, ip: str) -> None:
        """RELAY carries id, sender, recipient and the ip text unchanged (IPv4, IPv6, none)."""
        line = relay_line("a@x.test", "b@x.test", "c@y.test", ip)
        assert parse_request(line) == RelayRequest("a@x.test", "b@x.test", "c@y.test", ip)

    @pytest.mark.parametrize("txn", ["4242.1795903812187101", "a", "A-z_0.9", "x" * 64])
    def test_relay_line_carries_the_transaction_id(self, txn: str) -> None:
        """An optional sixth RELAY field names the SMTP transaction; five fields still parse."""
        line = relay_line("a@x.test", "b@x.test", "c@y.test", "192.0.2.1")
        assert parse_request(line[:-1] + f" {txn}\n".encode()) == RelayRequest(
            "a@x.test", "b@x.test", "c@y.test", "192.0.2.1", txn)
        assert parse_request(line).transaction == ""

    def test_forget_line_carries_a_base64_address(self) -> None:
        """FORGET (sent by the CLI after passwd/disable/delete) names one address."""
        assert parse_request(b"FORGET YUB4LnRlc3Q=\n") == ForgetRequest("a@x.test")

    def test_ping_line_parses_to_ping_request(self) -> None:
        """PING has no fields."""
        assert parse_request(b"PING\n") == PingRequest()

    @pytest.mark.parametrize(("line", "expected"), [
        pytest.param(b"RELAY    \n", RelayRequest("", "", "", ""), id="relay-all-empty"),
        pytest.param(f"RELAY  {b64('s@x.test')} {b64('r@y.test')} \n".encode(),
                     RelayRequest("", "s@x.test", "r@y.test", ""), id="empty-id"),
        pytest.param(f"RELAY {b64('a@x.test')}  {b64('r@y.test')} ::1\n".encode(),
                     RelayRequest("a@x.test", "", "r@y.test", "::1"), id="null-sender"),
        pytest.param(b"AUTH LOGIN   \n", AuthRequest("LOGIN", "", "", ""), id="auth-all-empty"),
    ])
    def test_empty_fields_parse(self, line: bytes, expected: Request) -> None:
        """Two spaces in a row are an empty value, as Exim sends an empty id or null sender."""
        assert parse_request(line) == expected

    def test_invalid_utf8_is_passed_on_not_rejected(self) -> None:
        """Bytes that are not UTF-8 survive (surrogate-escaped) for the checks to refuse."""
        raw = base64.b64encode(b"\xff\xfeuser").decode()
        request = parse_request(f"AUTH PLAIN {raw} {raw} \n".encode())
        assert isinstance(request, AuthRequest)
        assert request.username.encode("utf-8", "surrogateescape") == b"\xff\xfeuser"

    def test_nul_bytes_survive_decoding(self) -> None:
        """A NUL inside a value is data, not a terminator."""
        request = parse_request(auth_line("a\x00b", "\x00", ""))
        assert request == AuthRequest("PLAIN", "a\x00b", "\x00", "")

    def test_line_of_exactly_the_limit_parses(self) -> None:
        """MAX_REQUEST_BYTES counts the newline, and a line of exactly that size is accepted."""
        line = auth_line("", "x" * 3060, "::")
        assert len(line) == MAX_REQUEST_BYTES
        assert parse_request(line) == AuthRequest("PLAIN", "", "x" * 3060, "::")


@pytest.mark.parametrize(("data", "reason"), [
    pytest.param(b"", "empty", id="no-bytes"),
    pytest.param(b"PING", "missing-newline", id="eof-before-newline"),
    pytest.param(b"PING\r\n", "several-lines", id="crlf"),
    pytest.param(b"PI\rNG\n", "several-lines", id="bare-cr"),
    pytest.param(b"PING\nPING\n", "several-lines", id="two-lines"),
    pytest.param(b"PING\n\n", "several-lines", id="trailing-blank-line"),
    pytest.param(b"\n", "unknown-verb", id="blank-line"),
    pytest.param(b"ping\n", "unknown-verb", id="lower-case-verb"),
    pytest.param(b"Relay YQ== YQ== YQ== \n", "unknown-verb", id="mixed-case-verb"),
    pytest.param(b"QUIT\n", "unknown-verb", id="other-verb"),
    pytest.param(b" PING\n", "unknown-verb", id="leading-space"),
    pytest.param(b"PING \n", "wrong-field-count", id="ping-with-field"),
    pytest.param(b"FORGET\n", "wrong-field-count", id="forget-without-address"),
    pytest.param(b"FORGET YQ== YQ==\n", "wrong-field-count", id="forget-two-fields"),
    pytest.param(b"FORGET a$b\n", "bad-base64", id="forget-not-base64"),
    pytest.param(b"AUTH PLAIN YQ== YQ==\n", "wrong-field-count", id="auth-short"),
    pytest.param(b"AUTH PLAIN YQ== YQ== 1.2.3.4 x\n", "wrong-field-count", id="auth-long"),
    pytest.param(b"RELAY YQ== YQ== YQ==\n", "wrong-field-count", id="relay-short"),
    pytest.param(b"RELAY   \n", "wrong-field-count", id="relay-three-spaces"),
    pytest.param(b"RELAY YQ== YQ== YQ== 1.2.3.4 \n", "bad-transaction", id="relay-empty-txn"),
    pytest.param(b"RELAY YQ== YQ== YQ== 1.2.3.4 a b\n", "wrong-field-count", id="relay-long"),
    pytest.param(b"RELAY YQ== YQ== YQ== 1.2.3.4 a/b\n", "bad-transaction", id="txn-slash"),
    pytest.param(b"RELAY YQ== YQ== YQ== 1.2.3.4 " + b"a" * 65 + b"\n", "bad-transaction",
                 id="txn-too-long"),
    pytest.param(b"AUTH PLAIN YQ== YQ== 1.2.3.4 txn\n", "wrong-field-count",
                 id="auth-with-txn"),
    pytest.param(b"AUTH PLAIN YQ==  YQ== 1.2.3.4\n", "wrong-field-count", id="double-space"),
    pytest.param(b"AUTH plain YQ== YQ== 1.2.3.4\n", "unsupported-mechanism", id="lower-mech"),
    pytest.param(b"AUTH CRAM-MD5 YQ== YQ== 1.2.3.4\n", "unsupported-mechanism", id="cram-md5"),
    pytest.param(b"AUTH  YQ== YQ== 1.2.3.4\n", "unsupported-mechanism", id="empty-mech"),
    pytest.param(b"AUTH PLAIN YQ YQ== 1.2.3.4\n", "bad-base64", id="missing-padding"),
    pytest.param(b"AUTH PLAIN YQ= YQ== 1.2.3.4\n", "bad-base64", id="short-padding"),
    pytest.param(b"AUTH PLAIN == YQ== 1.2.3.4\n", "bad-base64", id="only-padding"),
    pytest.param(b"AUTH PLAIN YQ==YQ== YQ== 1.2.3.4\n", "bad-base64", id="data-after-pad"),
    pytest.param(b"RELAY a$b YQ== YQ== 1.2.3.4\n", "bad-base64", id="not-alphabet"),
    pytest.param(b"RELAY YQ== YQ== YQ-_ 1.2.3.4\n", "bad-base64", id="urlsafe-alphabet"),
    pytest.param(b"AUTH PLAIN YQ== YQ== 1.2.3.400\n", "bad-client-ip", id="ipv4-out-of-range"),
    pytest.param(b"AUTH PLAIN YQ== YQ== localhost\n", "bad-client-ip", id="host-name"),
    pytest.param(b"RELAY YQ== YQ== YQ== [192.0.2.1]\n", "bad-client-ip", id="bracketed"),
    pytest.param(b"RELAY YQ== YQ== YQ== 192.0.2.1.25\n", "bad-client-ip", id="ip-with-port"),
    pytest.param(b"RELAY YQ== YQ== YQ== fe80::1%eth0\n", "bad-client-ip", id="ipv6-scope"),
    pytest.param(b"AUTH PLAIN YQ==\x00 YQ== 1.2.3.4\n", "not-ascii", id="nul"),
    pytest.param(b"AUTH PLAIN YQ==\tYQ== YQ== 1.2.3.4\n", "not-ascii", id="tab"),
    pytest.param(b"PING\x7f\n", "not-ascii", id="del"),
    pytest.param(b"PING\x1f\n", "not-ascii", id="unit-separator"),    # one under space
    pytest.param(b"PING~\n", "unknown-verb", id="tilde-is-printable"),  # \x7e: the last
    pytest.param(b"RELAY YQ== YQ== YQ== 1.2.3.4 a~\n", "bad-transaction", id="txn-tilde"),
    pytest.param("RELAY ä YQ== YQ== 1.2.3.4\n".encode(), "not-ascii", id="utf-8"),
    pytest.param(b"PING\n" + b"x" * MAX_REQUEST_BYTES, "too-long", id="way-too-long"),
    pytest.param(auth_line("", "x" * 3060, "::1"), "too-long", id="one-byte-over"),
    pytest.param(b"x" * (MAX_REQUEST_BYTES + 1), "too-long", id="too-long-without-newline"),
])
def test_malformed_requests_raise_protocol_error(data: bytes, reason: str) -> None:
    """Each malformation has its documented reason, and the message is only that reason."""
    with pytest.raises(ProtocolError) as info:
        parse_request(data)
    assert info.value.reason == reason
    assert str(info.value) == reason
    assert reason in REASONS


class TestProtocolError:
    """The exception a malformed request raises."""

    def test_is_both_eximauthd_error_and_value_error(self) -> None:
        """Callers may catch the package root or the builtin for input-shape errors."""
        error = ProtocolError("bad-base64")
        assert isinstance(error, EximauthdError)
        assert isinstance(error, ValueError)

    def test_message_never_quotes_field_contents(self) -> None:
        """A secret in a malformed line does not reach the exception text."""
        secret = base64.b64encode(b"hunter2").decode()
        with pytest.raises(ProtocolError) as info:
            parse_request(f"AUTH PLAIN {secret} {secret} nowhere\n".encode())
        assert info.value.reason == "bad-client-ip"
        assert secret not in repr(info.value)
        assert "hunter2" not in repr(info.value)
        assert info.value.args == ("bad-client-ip",)


class TestRequestValues:
    """Request values are immutable, slotted, and keep secrets out of logs."""

    @pytest.mark.parametrize(("request_value", "field"), [
        pytest.param(AuthRequest("PLAIN", "a@x.test", "pw", ""), "password", id="auth"),
        pytest.param(RelayRequest("a@x.test", "b@x.test", "c@y.test", ""), "sender",
                     id="relay"),
    ])
    def test_fields_cannot_be_reassigned(self, request_value: Request, field: str) -> None:
        """A parsed request is a value: nothing downstream can change it."""
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(request_value, field, "192.0.2.1")

    @pytest.mark.parametrize("request_value", [
        AuthRequest("PLAIN", "", "", ""), RelayRequest("", "", "", ""), PingRequest(),
    ], ids=["auth", "relay", "ping"])
    def test_request_classes_are_frozen_and_slotted(self, request_value: Request) -> None:
        """Every request class is a frozen dataclass with __slots__, so no instance __dict__."""
        params = getattr(type(request_value), "__dataclass_params__", None)
        assert params is not None
        assert params.frozen
        assert "__slots__" in vars(type(request_value))
        assert not hasattr(request_value, "__dict__")

    @pytest.mark.parametrize("render", [repr, str, "{}".format, "{!r}".format],
                             ids=["repr", "str", "format", "format-repr"])
    def test_password_is_masked(self, render: Callable[[object], str]) -> None:
        """No rendering of an AUTH request shows the password; the username stays visible."""
        text = render(AuthRequest("PLAIN", "alice@example.test", "hunter2", "::1"))
        assert "hunter2" not in text
        assert "password='***'" in text
        assert "alice@example.test" in text

    def test_empty_password_is_shown_as_empty(self) -> None:
        """An empty password is visible as such, which is what an admin needs to see."""
        assert "password=''" in repr(AuthRequest("PLAIN", "alice@example.test", "", ""))

    @given(password=st.text(max_size=30), other=st.text(min_size=1, max_size=30))
    def test_repr_does_not_depend_on_the_password(self, password: str, other: str) -> None:
        """Two requests that differ only in a non-empty password render identically."""
        request = AuthRequest("LOGIN", "u@x.test", password, "")
        masked = AuthRequest("LOGIN", "u@x.test", other if password else "", "")
        assert repr(request) == repr(masked)
        assert str(request) == str(masked)


class TestFormatReply:
    """The three documented answers."""

    @pytest.mark.parametrize(("decision", "wire"), [
        pytest.param(Decision.yes("ok"), b"yes\n", id="yes"),
        pytest.param(Decision.yes("same-domain"), b"yes\n", id="yes-reason-not-sent"),
        pytest.param(Decision.no("bad-password"), b"no\n", id="no-reason-not-sent"),
        pytest.param(Decision.defer("database-unavailable"), b"defer database-unavailable\n",
                     id="defer"),
        pytest.param(Decision.defer("v1.2_ok-x"), b"defer v1.2_ok-x\n", id="defer-allowed-chars"),
        pytest.param(Decision.defer("two words\nand a newline"),
                     b"defer two-words-and-a-newline\n", id="defer-sanitised"),
        pytest.param(Decision.defer("ünï\x00"), b"defer -n--\n", id="defer-non-ascii"),
        pytest.param(Decision.defer(""), b"defer unavailable\n", id="defer-empty"),
        pytest.param(Decision.defer("x" * 200), b"defer " + b"x" * 64 + b"\n", id="defer-cut"),
    ])
    def test_format(self, decision: Decision, wire: bytes) -> None:
        """yes and no carry no reason on the wire; defer reasons are sanitised and bounded."""
        assert format_reply(decision) == wire
        assert is_valid_reply(wire)


class TestIsValidReply:
    """The checker the service's fuzz tests use."""

    @pytest.mark.parametrize("data", [b"yes\n", b"no\n", b"defer x\n",
                                      b"defer " + b"a" * 64 + b"\n"])
    def test_documented_answers_are_valid(self, data: bytes) -> None:
        """Each documented answer line is recognised."""
        assert is_valid_reply(data)

    @pytest.mark.parametrize("data", [
        b"yes", b"yes\n\n", b" yes\n", b"YES\n", b"yes\r\n", b"no reason\n", b"defer\n",
        b"defer \n", b"defer a b\n", b"defer " + b"a" * 65 + b"\n", b"maybe\n", b"",
        b"yes\nno\n",
    ])
    def test_anything_else_is_invalid(self, data: bytes) -> None:
        """Anything but one exact answer line is not a reply."""
        assert not is_valid_reply(data)


# --- properties ------------------------------------------------------------------------------

_ips = st.one_of(st.just(""), st.ip_addresses().map(str))
# Values as a client may send them: short, with every awkward character hypothesis knows.
_values = st.text(max_size=200)
_awkward = ["", "\x00", " ", "  a b ", '"q"', "'", "\n", "\r\n", "ünïcødé", "\U0001f600",
            "\udcff"]


def _outcome(data: bytes) -> Request | ProtocolError:
    try:
        return parse_request(data)
    except ProtocolError as exc:
        return exc


@given(st.binary(max_size=MAX_REQUEST_BYTES + 10))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    """Arbitrary input never raises anything but ProtocolError with a documented reason."""
    outcome = _outcome(data)
    if isinstance(outcome, ProtocolError):
        assert outcome.reason in REASONS
        assert isinstance(outcome.reason, Reason)  # the service answers Reason(reason)


_b64_fields = st.binary(max_size=30).map(lambda raw: base64.b64encode(raw).decode())
_odd_fields = st.one_of(
    st.sampled_from(["", "PLAIN", "LOGIN", "plain", "::1", "192.0.2.1", "YQ", "YQ=", "==",
                     "fe80::1%lo", "1.2.3.400"]),
    st.text(st.characters(max_codepoint=0x7F), max_size=8),
)
# Mostly the right shape (mechanism, base64 values, an ip), with a few fields gone wrong.
_fields = st.one_of(
    st.tuples(st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5"]) | _b64_fields,
              _b64_fields | _odd_fields, _b64_fields | _odd_fields, _ips | _odd_fields).map(list),
    st.lists(_b64_fields | _odd_fields, max_size=6),
)


@given(verb=st.sampled_from(["AUTH", "RELAY", "PING", "auth", "", "QUIT"]), fields=_fields,
       end=st.sampled_from(["\n", "\n", "\n", "", "\r\n", "\n\n"]))
def test_near_miss_lines_parse_or_raise_protocol_error(verb: str, fields: list[str],
                                                       end: str) -> None:
    """Lines close to the grammar reach every check and still only yield a request or a reason."""
    data = (" ".join([verb, *fields]) + end).encode()
    outcome = _outcome(data)
    if isinstance(outcome, ProtocolError):
        assert outcome.reason in REASONS
        assert isinstance(outcome.reason, Reason)  # the service answers Reason(reason)
    else:
        expected = {"AUTH": AuthRequest, "RELAY": RelayRequest, "PING": PingRequest}[verb]
        assert type(outcome) is expected


@given(user=_values, password=_values, ip=_ips, mechanism=st.sampled_from(["PLAIN", "LOGIN"]))
@example(user="", password="", ip="", mechanism="PLAIN")
@example(user="a\x00b", password=' "q" \n\r\'', ip="::1", mechanism="LOGIN")
@example(user="ünï@例え.テスト", password="\U0001f600\udcff", ip="2001:db8::1", mechanism="PLAIN")
def test_auth_round_trip(user: str, password: str, ip: str, mechanism: str) -> None:
    """Any values (empty, NUL, spaces, quotes, newlines, unicode) come back intact."""
    line = auth_line(user, password, ip, mechanism)
    assert len(line) <= MAX_REQUEST_BYTES
    assert parse_request(line) == AuthRequest(mechanism, user, password, ip)


@given(values=st.tuples(_values, _values, _values), ip=_ips)
@example(values=("", "", ""), ip="")
@example(values=tuple(_awkward[:3]), ip="192.0.2.1")
@example(values=tuple(_awkward[-3:]), ip="::")
def test_relay_round_trip(values: tuple[str, str, str], ip: str) -> None:
    """RELAY values survive the trip too, empty ones included."""
    line = relay_line(*values, ip)
    assert len(line) <= MAX_REQUEST_BYTES
    assert parse_request(line) == RelayRequest(*values, ip)


@given(raw=st.binary(max_size=200))
def test_raw_bytes_round_trip(raw: bytes) -> None:
    """Any byte string, valid UTF-8 or not, is recoverable from the decoded value."""
    encoded = base64.b64encode(raw).decode()
    request = parse_request(f"RELAY {encoded} {encoded} {encoded} \n".encode())
    assert isinstance(request, RelayRequest)
    assert request.sender.encode("utf-8", "surrogateescape") == raw


@given(result=st.sampled_from(list(Result)), reason=st.text())
@example(result=Result.DEFER, reason="")
@example(result=Result.DEFER, reason="\n")
@example(result=Result.DEFER, reason="\udcff" * 100)
def test_every_formatted_reply_is_valid(result: Result, reason: str) -> None:
    """format_reply can only produce documented answers, whatever the reason text."""
    wire = format_reply(Decision(result, reason))
    assert is_valid_reply(wire)
    assert wire.startswith(result.value.encode())


@pytest.mark.parametrize("field", ["1" * 46, "2001:db8::" + "1:" * 20 + "1", "x" * 4096])
def test_a_client_ip_longer_than_any_address_is_refused_as_one(field: str) -> None:
    """Past 45 characters (the longest IPv6 text) a field is checked without being
    remembered, and refused like any other bad address."""
    with pytest.raises(ProtocolError) as refused:
        parse_client_ip(field)
    assert refused.value.reason == Reason.BAD_CLIENT_IP
