"""The SMTP self-test's judging of observed replies (pure), and the result lines it prints."""

from __future__ import annotations

import pytest

from eximauthd.core.checks import CheckResult, Status
from eximauthd.exim.selftest import (
    Reply,
    foreign_senders,
    judge_auth_advertising,
    judge_auth_refused,
    judge_login,
    judge_own_sender,
    judge_sender_refused,
    judge_unauthenticated_relay,
    remote_domains,
)

OK, WARN, FAIL = Status.OK, Status.WARN, Status.FAIL
MAIL_OK = Reply(250, "OK")


@pytest.mark.parametrize(("reply", "status"), [
    (Reply(235, "Authentication succeeded"), FAIL),
    (Reply(250, "odd but accepted"), FAIL),
    (Reply(535, "Incorrect authentication data"), OK),
    (Reply(503, "AUTH command used when not advertised"), OK),
    (Reply(504, "unknown mechanism"), OK),
    (Reply(435, "temporarily unavailable"), WARN),
    (Reply(454, "TLS required"), WARN),
])
def test_a_login_that_must_fail_passes_only_when_refused_for_good(reply: Reply,
                                                                  status: Status) -> None:
    result = judge_auth_refused("AUTH PLAIN with empty user and password", reply)
    assert result.status is status
    assert str(reply.code) in result.line()


@pytest.mark.parametrize(("mail", "rcpt", "status", "step"), [
    (MAIL_OK, Reply(550, "relay not permitted"), OK, "RCPT"),
    (Reply(550, "no"), None, OK, "MAIL"),
    (MAIL_OK, Reply(250, "Accepted"), FAIL, "RCPT"),
    (MAIL_OK, Reply(451, "sender check temporarily unavailable"), WARN, "RCPT"),
    (Reply(421, "shutting down"), None, WARN, "MAIL"),
])
@pytest.mark.parametrize("judge", ["unauthenticated", "foreign-sender"])
def test_an_envelope_that_must_be_refused(mail: Reply, rcpt: Reply | None, status: Status,
                                          step: str, judge: str) -> None:
    if judge == "unauthenticated":
        result = judge_unauthenticated_relay(mail, rcpt)
    else:
        result = judge_sender_refused("a foreign sender <postmaster@example.org>", mail, rcpt)
    assert result.status is status
    assert f"at {step}" in result.line()
    assert ("(fix: " in result.line()) is (status is not OK)


@pytest.mark.parametrize(("before", "starttls", "after", "expected"), [
    (False, Reply(220), True, [OK, OK]),
    (True, Reply(220), True, [FAIL, OK]),
    (False, Reply(220), False, [OK, WARN]),
    (False, None, None, [OK, FAIL]),
    (True, None, None, [FAIL, FAIL]),
    (False, Reply(454, "TLS not available"), None, [OK, FAIL]),
])
def test_auth_belongs_inside_tls(before: bool, starttls: Reply | None, after: bool | None,
                                 expected: list[Status]) -> None:
    assert [r.status for r in judge_auth_advertising(before, starttls, after)] == expected


@pytest.mark.parametrize(("reply", "status"), [
    (Reply(235, "Authentication succeeded"), OK),
    (Reply(535, "Incorrect authentication data"), FAIL),
    (Reply(435, "temporarily unavailable"), FAIL),
])
def test_the_real_login_must_succeed_for_the_sender_checks(reply: Reply,
                                                           status: Status) -> None:
    assert judge_login("alice@example.test", reply).status is status


@pytest.mark.parametrize(("mail", "rcpt", "status"), [
    (MAIL_OK, Reply(250, "Accepted"), OK),
    (MAIL_OK, Reply(550, "not permitted"), WARN),
    (Reply(550, "no"), None, WARN),
])
def test_the_own_address_control(mail: Reply, rcpt: Reply | None, status: Status) -> None:
    assert judge_own_sender("alice@example.test", mail, rcpt).status is status


@pytest.mark.parametrize(("user", "recipient_domain", "foreign_domain"), [
    ("alice@example.test", "example.net", "example.org"),
    ("alice@example.net", "example.org", "example.com"),
    ("alice@mx.EXAMPLE.org", "example.net", "example.com"),
])
def test_reserved_domains_are_never_the_users_own(user: str, recipient_domain: str,
                                                  foreign_domain: str) -> None:
    assert remote_domains(user) == (recipient_domain, foreign_domain)


def test_foreign_senders_are_look_alikes_of_the_user_and_never_the_user() -> None:
    senders = dict(foreign_senders("alice@example.test"))
    assert senders == {
        "a foreign sender": "postmaster@example.org",
        "the same local part at another domain": "alice@example.org",
        "its domain as a prefix of another": "alice@example.test.example.org",
        "a homoglyph of its domain": "alice@\u0435xample.test",
        "the null sender": "",
    }
    assert "alice@example.test" not in senders.values()


@pytest.mark.parametrize(("result", "line"), [
    (CheckResult.ok("PING on /run/eximauthd/eximauthd.sock: yes"),
     "ok   PING on /run/eximauthd/eximauthd.sock: yes"),
    (CheckResult.fail("smtp: x", "accepted at RCPT (250 Accepted\nmore)", "do y"),
     "FAIL smtp: x: accepted at RCPT (250 Accepted more) (fix: do y)"),
    (CheckResult.warn("HTTP", "odd"), "warn HTTP: odd"),
])
def test_every_result_is_one_line(result: CheckResult, line: str) -> None:
    assert result.line() == line
