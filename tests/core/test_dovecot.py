"""Dovecot's auth-client protocol: the pure session (lines in, actions out)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximauthd.core.decision import Decision, Reason
from eximauthd.core.dovecot import (
    MAX_LINE_BYTES,
    MAX_REQUESTS,
    Check,
    Close,
    Reply,
    Session,
    handshake,
)

USER, PASSWORD = "alice@example.test", "S3cret pass"
EXIM_AUTH = "AUTH\t1\t{mech}\tservice=smtp\trip=192.0.2.7\tlip=127.0.0.1\tnologin\tresp={resp}"


def b64(raw: bytes | str) -> str:
    data = raw.encode() if isinstance(raw, str) else raw
    return base64.b64encode(data).decode()


def plain(authzid: str, user: str, password: str) -> str:
    return b64(f"{authzid}\0{user}\0{password}")


# A PLAIN message whose base64 has "+" and "/", in the URL-safe alphabet ("-", "_").
_WITH_SLASH_PLUS = plain("", USER, "\u00fb\u00ef\u00bf~>?")
URLSAFE = _WITH_SLASH_PLUS.replace("+", "-").replace("/", "_")


def ready() -> Session:
    """A session past the client's VERSION and CPID, as Exim and Postfix open it."""
    session = Session()
    assert session.receive(b"VERSION\t1\t0") == []
    assert session.receive(b"CPID\t4242") == []
    return session


def send(session: Session, line: str) -> list[Reply | Close | Check]:
    return session.receive(line.encode())


def lines(actions: list[Reply | Close | Check]) -> list[str]:
    return [a.line for a in actions if isinstance(a, Reply)]


class TestHandshake:
    """What the server sends unprompted."""

    def test_mech_lines_come_before_spid_and_carry_plaintext(self) -> None:
        """VERSION 1, PLAIN and LOGIN flagged plaintext before SPID, then CUID, COOKIE, DONE."""
        text = handshake(123, 7, "0" * 32).decode()
        assert text == ("VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\n"
                        "SPID\t123\nCUID\t7\nCOOKIE\t" + "0" * 32 + "\nDONE\n")

    @pytest.mark.parametrize(("spid", "cuid", "cookie"), [
        (0, 1, "a" * 32), (1, 0, "a" * 32), (1, 1, "a" * 31), (1, 1, "A" * 32),
        (1, 1, "a" * 31 + "\n")], ids=["spid", "cuid", "short-cookie", "upper", "newline"])
    def test_bad_values_are_refused(self, spid: int, cuid: int, cookie: str) -> None:
        """A value that would break the handshake's lines raises."""
        with pytest.raises(ValueError, match="handshake"):
            handshake(spid, cuid, cookie)


class TestOpening:
    """The client's VERSION comes first; CPID once."""

    @pytest.mark.parametrize("first", [
        b"CPID\t1", b"VERSION\t2\t0", b"VERSION\t1", b"VERSION\t1\tx", b"VERSION\t1\t0\t0",
        EXIM_AUTH.format(mech="PLAIN", resp="").encode(), b""],
        ids=["cpid", "major-2", "no-minor", "minor-text", "extra-field", "auth", "empty"])
    def test_anything_but_version_1_first_closes(self, first: bytes) -> None:
        """The connection closes; nothing is checked."""
        assert Session().receive(first) == [Close("version-expected")]

    def test_second_cpid_closes(self) -> None:
        """CPID is sent once per connection."""
        assert ready().receive(b"CPID\t1") == [Close("bad-cpid")]

    def test_closed_session_stays_closed(self) -> None:
        """After a Close every line gets the same Close back, even a valid AUTH."""
        session = ready()
        assert send(session, "HELLO") == [Close("unknown-command")]
        assert send(session, EXIM_AUTH.format(mech="PLAIN", resp=plain("", USER, PASSWORD))
                    ) == [Close("unknown-command")]
        assert session.decided(1, Decision.yes(), USER) is None


class TestPlain:
    """PLAIN with and without an initial response."""

    def test_initial_response_is_checked(self) -> None:
        """Exim's line: resp= holds authzid NUL user NUL password; the check gets them."""
        actions = send(ready(), EXIM_AUTH.format(mech="PLAIN", resp=plain("", USER, PASSWORD)))
        assert actions == [Check(1, "PLAIN", USER, PASSWORD, "192.0.2.7")]

    @pytest.mark.parametrize("line", [
        EXIM_AUTH.format(mech="PLAIN", resp=""),               # Exim: resp= always present
        "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.7",  # Postfix
    ], ids=["exim", "postfix"])
    def test_without_initial_response_an_empty_challenge(self, line: str) -> None:
        """CONT with an empty challenge (TAB included), then the CONT data is checked."""
        session = ready()
        assert lines(send(session, line)) == ["CONT\t1\t"]
        actions = send(session, f"CONT\t1\t{plain('', USER, PASSWORD)}")
        assert actions == [Check(1, "PLAIN", USER, PASSWORD, "192.0.2.7")]

    def test_authzid_equal_to_user_is_checked(self) -> None:
        """Acting as oneself is fine."""
        actions = send(ready(), EXIM_AUTH.format(mech="PLAIN", resp=plain(USER, USER, PASSWORD)))
        assert actions == [Check(1, "PLAIN", USER, PASSWORD, "192.0.2.7")]

    @pytest.mark.parametrize(("resp", "refused"), [
        (plain("bob@example.test", USER, PASSWORD), "authzid-mismatch"),
        (plain("ALICE@example.test", USER, PASSWORD), "authzid-mismatch"),
        (b64(f"{USER}\0{PASSWORD}"), "malformed-plain"),
        (b64(f"\0{USER}\0{PASSWORD}\0"), "malformed-plain"),
        ("=", "malformed-plain"),                           # RFC 4954's empty response
        ("%%%notbase64", "bad-base64"),
        (plain("", USER, PASSWORD)[:-1], "bad-base64"),    # padding cut
        (plain("", USER, PASSWORD) + "AAAA", "bad-base64"),  # data after padding
        ("AGFA YgBw", "bad-base64"),                        # blank inside
        ("==", "bad-base64"),
        (plain("\u0430lice@example.test", USER, PASSWORD), "authzid-mismatch"),  # Cyrillic a
        (plain(USER + " ", USER, PASSWORD), "authzid-mismatch"),
        (URLSAFE, "bad-base64"),
    ], ids=["authzid-other", "authzid-case", "one-nul", "three-nuls", "rfc4954-empty",
            "not-base64", "no-padding", "after-padding", "blank", "only-padding",
            "authzid-look-alike", "authzid-trailing-blank", "urlsafe-alphabet"])
    def test_refused_without_a_check(self, resp: str, refused: str) -> None:
        """FAIL for the request, no credential check, the connection stays usable."""
        session = ready()
        actions = send(session, EXIM_AUTH.format(mech="PLAIN", resp=resp))
        assert actions == [Reply("FAIL\t1", refused, "PLAIN", "192.0.2.7")]
        assert session.open_requests == 0
        assert lines(send(session, EXIM_AUTH.format(mech="PLAIN", resp=""))) == ["CONT\t1\t"]

    @pytest.mark.parametrize(("authzid", "user", "password"), [
        ("", "", ""), ("", "nobody@example.test", ""), ("", USER, ""), ("", "", PASSWORD)],
        ids=["empty-both", "unknown-empty", "known-empty", "empty-user"])
    def test_empty_credentials_still_go_to_the_check(self, authzid: str, user: str,
                                                     password: str) -> None:
        """The check refuses them (and logs and counts them): the session never decides."""
        actions = send(ready(), EXIM_AUTH.format(mech="PLAIN", resp=plain(authzid, user,
                                                                          password)))
        assert actions == [Check(1, "PLAIN", user, password, "192.0.2.7")]


class TestLogin:
    """LOGIN: Username:, Password:, an initial response skips the first prompt."""

    def test_two_prompts_then_check(self) -> None:
        """CONT VXNlcm5hbWU6, CONT UGFzc3dvcmQ6, then the check."""
        session = ready()
        assert lines(send(session, EXIM_AUTH.format(mech="LOGIN", resp=""))) == [
            "CONT\t1\tVXNlcm5hbWU6"]
        assert lines(send(session, f"CONT\t1\t{b64(USER)}")) == ["CONT\t1\tUGFzc3dvcmQ6"]
        assert send(session, f"CONT\t1\t{b64(PASSWORD)}") == [
            Check(1, "LOGIN", USER, PASSWORD, "192.0.2.7")]

    def test_initial_response_is_the_username(self) -> None:
        """resp= skips Username:."""
        session = ready()
        assert lines(send(session, EXIM_AUTH.format(mech="LOGIN", resp=b64(USER)))) == [
            "CONT\t1\tUGFzc3dvcmQ6"]
        assert send(session, "CONT\t1\t") == [Check(1, "LOGIN", USER, "", "192.0.2.7")]

    def test_mechanism_name_is_caseless(self) -> None:
        """A lower-case name is the same mechanism."""
        assert lines(send(ready(), EXIM_AUTH.format(mech="login", resp=""))) == [
            "CONT\t1\tVXNlcm5hbWU6"]

    def test_bad_base64_password_fails(self) -> None:
        """FAIL, no check."""
        session = ready()
        send(session, EXIM_AUTH.format(mech="LOGIN", resp=b64(USER)))
        assert send(session, "CONT\t1\t***") == [
            Reply("FAIL\t1", "bad-base64", "LOGIN", "192.0.2.7")]


class TestDecided:
    """Only a yes of the check makes an OK; defer closes."""

    def checking(self, user: str = USER) -> Session:
        session = ready()
        send(session, EXIM_AUTH.format(mech="PLAIN", resp=plain("", user, PASSWORD)))
        return session

    def test_yes_is_ok_with_the_canonical_login(self) -> None:
        """user= is always there, lower-cased as the account's address."""
        session = self.checking("Alice@Example.TEST")
        assert session.decided(1, Decision.yes(), "Alice@Example.TEST") == Reply(
            "OK\t1\tuser=alice@example.test")
        assert session.open_requests == 0

    @pytest.mark.parametrize("reason", [Reason.BAD_PASSWORD, Reason.UNKNOWN_USER,
                                        Reason.DISABLED, Reason.THROTTLED_IP])
    def test_no_is_fail_without_a_reason(self, reason: Reason) -> None:
        """FAIL carries no reason= (Postfix shows it to the client): no account state."""
        assert self.checking().decided(1, Decision.no(reason), USER) == Reply("FAIL\t1")

    @pytest.mark.parametrize("reason", [Reason.DATABASE_UNAVAILABLE, Reason.OVERLOADED,
                                        Reason.TIMEOUT])
    def test_defer_closes_the_connection(self, reason: Reason) -> None:
        """Neither OK nor FAIL: the MTA answers 4xx when the connection ends."""
        session = self.checking()
        assert session.decided(1, Decision.defer(reason), USER) == Close(f"defer-{reason}")
        assert send(session, "CPID\t1") == [Close(f"defer-{reason}")]

    def test_yes_for_a_user_that_is_no_address_is_fail(self) -> None:
        """OK never carries a login that could break the line or be empty."""
        session = self.checking("x\tuser=root")
        assert session.decided(1, Decision.yes(), "x\tuser=root") == Reply("FAIL\t1")

    def test_decision_for_an_unknown_or_waiting_request_is_ignored(self) -> None:
        """Only a request whose check runs gets the check's answer."""
        session = ready()
        assert session.decided(9, Decision.yes(), USER) is None
        send(session, EXIM_AUTH.format(mech="PLAIN", resp=""))
        assert session.decided(1, Decision.yes(), USER) is None

    def test_cancel_during_check_drops_the_reply(self) -> None:
        """CANCEL while checking: the check finishes, nothing is sent."""
        session = self.checking()
        assert send(session, "CANCEL\t1") == []
        assert session.decided(1, Decision.yes(), USER) is None
        assert session.open_requests == 0

    def test_cancel_of_a_waiting_request_forgets_it(self) -> None:
        """A later CONT for it gets FAIL."""
        session = ready()
        send(session, EXIM_AUTH.format(mech="LOGIN", resp=""))
        assert send(session, "CANCEL\t1") == []
        assert send(session, f"CONT\t1\t{b64(USER)}") == [Reply("FAIL\t1", "unknown-id")]


class TestManyRequests:
    """Many ids on one connection (Postfix), a bounded number open at once."""

    def test_ids_follow_each_other_on_one_connection(self) -> None:
        """Postfix reuses its connection: ids 1, 2, 3 each get their own answer."""
        session = ready()
        for request_id in (1, 2, 3):
            line = (f"AUTH\t{request_id}\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1"
                    f"\trip=192.0.2.7\tsecured\tresp={plain('', USER, PASSWORD)}")
            assert send(session, line) == [Check(request_id, "PLAIN", USER, PASSWORD,
                                                 "192.0.2.7")]
            assert session.decided(request_id, Decision.yes(), USER) == Reply(
                f"OK\t{request_id}\tuser={USER}")

    def test_abandoned_requests_are_dropped_oldest_first(self) -> None:
        """Never cancelled, they stay until the cap: then the oldest waiting one goes."""
        session = ready()
        for request_id in range(1, MAX_REQUESTS + 5):
            assert lines(send(session, f"AUTH\t{request_id}\tLOGIN\tservice=smtp")) == [
                f"CONT\t{request_id}\tVXNlcm5hbWU6"]
            assert session.open_requests <= MAX_REQUESTS
        assert send(session, f"CONT\t1\t{b64(USER)}") == [Reply("FAIL\t1", "unknown-id")]
        assert lines(send(session, f"CONT\t{MAX_REQUESTS + 4}\t{b64(USER)}")) == [
            f"CONT\t{MAX_REQUESTS + 4}\tUGFzc3dvcmQ6"]

    def test_too_many_checks_at_once_close(self) -> None:
        """Checks running are never dropped: one more request than the cap closes."""
        session = ready()
        for request_id in range(1, MAX_REQUESTS + 1):
            resp = plain("", USER, PASSWORD)
            assert isinstance(send(session, f"AUTH\t{request_id}\tPLAIN\tresp={resp}")[0],
                              Check)
        assert send(session, f"AUTH\t{MAX_REQUESTS + 1}\tPLAIN") == [
            Close("too-many-requests")]

    @pytest.mark.parametrize(("line", "reason"), [
        ("AUTH\t1\tPLAIN\tresp=", "id-in-use"),
        ("CONT\t1\tAAAA", "cont-while-checking"),
    ], ids=["same-id", "cont-during-check"])
    def test_reusing_a_running_id_closes(self, line: str, reason: str) -> None:
        """An id whose check runs cannot be reused or continued."""
        session = ready()
        send(session, EXIM_AUTH.format(mech="PLAIN", resp=plain("", USER, PASSWORD)))
        assert send(session, line) == [Close(reason)]


class TestMalformed:
    """Lines the server cannot read end the connection (a temporary error, never OK)."""

    @pytest.mark.parametrize(("line", "reason"), [
        (b"AUTH\t0\tPLAIN", "bad-id"),
        (b"AUTH\t01\tPLAIN", "bad-id"),
        (b"AUTH\t4294967296\tPLAIN", "bad-id"),
        (b"AUTH\t-1\tPLAIN", "bad-id"),
        (b"AUTH\tx\tPLAIN", "bad-id"),
        (b"AUTH\t1", "wrong-field-count"),
        (b"AUTH\t1\tCRAM-MD5", "unsupported-mechanism"),
        ("AUTH\t1\tpla\u0131n".encode(), "unsupported-mechanism"),  # dotless i: "PLAIN" upper
        ("AUTH\t1\tlog\u0131n".encode(), "unsupported-mechanism"),
        (b"AUTH\t1\tPLAIN\trip=not-an-ip", "bad-client-ip"),
        (b"AUTH\t1\tPLAIN\trip=fe80::1%eth0", "bad-client-ip"),
        (b"AUTH\t1\tPLAIN\tresp=AAAA\tresp=AAAA", "repeated-parameter"),
        (b"AUTH\t1\tPLAIN\tresp=\x01AAA", "control-character"),
        (b"AUTH\t1\tPLAIN\tresp=AA\x00A", "control-character"),
        (b"AUTH\t1\tPLAIN\tresp=AAAA\r", "control-character"),
        (b"AUTH\t1\tPLAIN\tservice=\xff", "not-utf8"),
        (b"CONT\t1", "wrong-field-count"),
        (b"CANCEL", "wrong-field-count"),
        (b"USER\t1\talice", "unknown-command"),
        (b"A" * MAX_LINE_BYTES, "too-long"),
    ], ids=["id-0", "id-leading-zero", "id-over-32-bits", "id-negative", "id-text",
            "no-mech", "cram-md5", "plain-dotless-i", "login-dotless-i", "bad-rip",
            "scoped-rip", "resp-twice", "soh", "nul", "cr",
            "not-utf8", "cont-short", "cancel-short", "unknown", "too-long"])
    def test_closes(self, line: bytes, reason: str) -> None:
        """The reason is named for the log; the session is closed."""
        session = ready()
        assert session.receive(line) == [Close(reason)]
        assert session.closed == Close(reason)

    def test_longest_line_is_read(self) -> None:
        """A line just under the cap is read (an unknown parameter, ignored)."""
        session = ready()
        line = "AUTH\t1\tPLAIN\tx=" + "a" * (MAX_LINE_BYTES - 1 - len("AUTH\t1\tPLAIN\tx="))
        assert lines(send(session, line)) == ["CONT\t1\t"]

    def test_unknown_parameters_and_flags_are_ignored(self) -> None:
        """Read by name: order, extra flags and unknown names do not matter."""
        line = (f"AUTH\t1\tPLAIN\tresp={plain('', USER, PASSWORD)}\tsecured\tvalid-client-cert"
                "\tsession=abc\trip=2001:db8::7\tlip=::1\tnologin\tservice=smtp")
        assert send(ready(), line) == [Check(1, "PLAIN", USER, PASSWORD, "2001:db8::7")]

    def test_check_repr_hides_the_password(self) -> None:
        """A Check in a log or traceback shows no password."""
        check = Check(1, "PLAIN", USER, PASSWORD, "192.0.2.7")
        assert PASSWORD not in repr(check)
        assert PASSWORD not in str(check)


_FUZZ_LINES = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(["AUTH", "CONT", "CANCEL", "CPID", "VERSION", "1", "2", "0",
                              "PLAIN", "LOGIN", "resp=", "resp==", "resp=AAAA", "rip=::1",
                              "resp=" + plain("", USER, PASSWORD), b64(USER), b64(PASSWORD),
                              "", "\x00", "\x01", "secured", "é"]),
             min_size=1, max_size=8).map(lambda parts: "\t".join(parts).encode()),
)


@given(st.lists(_FUZZ_LINES, max_size=40))
def test_fuzz_never_raises_never_ok(stream: list[bytes]) -> None:
    """Random lines after a good opening: actions only, never an OK, state stays capped."""
    session = ready()
    for line in stream:
        for action in session.receive(line):
            assert isinstance(action, Reply | Close | Check)
            if isinstance(action, Reply):
                assert not action.line.startswith("OK"), action
                assert "\n" not in action.line
        assert session.open_requests <= MAX_REQUESTS


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_fuzz_from_the_first_line(stream: list[bytes]) -> None:
    """Random bytes from the start never raise and never answer OK."""
    session = Session()
    for line in stream:
        for action in session.receive(line):
            assert not (isinstance(action, Reply) and action.line.startswith("OK"))
