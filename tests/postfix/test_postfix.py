"""A real Postfix 3.7 with the shipped submission service, logins and relay rule by eximauthd.

One Postfix and one eximauthd (Dovecot auth and policy front ends, SQLite) for the module:
Postfix's setup is the slow part.  Postfix is never installed (see tests/postfixkit.py).
Under CI=true a rig that cannot start fails the tests instead of skipping them.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from eximauthd.core.addresses import parse_address
from eximauthd.core.limits import parse_limits
from eximauthd.db.accounts import OwnAccountStore
from eximauthd.db.counters import LimitStore
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig

from .. import postfixkit
from .. import servicekit as kit
from ..eximkit import Transcript, _tls_context, session
from ..support import FAST_HASHING, PASSWORD, in_ci, populate, wait_for

ALICE = "alice@example.test"
DAVE = "dave@example.test"  # at most 2 messages an hour (user limits)


@dataclass
class Rig:
    """Postfix and the eximauthd it asks; the service can be stopped and started again."""

    postfix: postfixkit.Postfix
    db_url: str
    env: dict[str, str]
    served: kit.Served | None = None

    @property
    def port(self) -> int:
        return self.postfix.port

    def start_service(self) -> None:
        self.served = kit.start_service(self.db_url, extra_env=self.env)

    def stop_service(self) -> None:
        if self.served is not None:
            self.served.stop()
            shutil.rmtree(Path(self.served.socket_path).parent, ignore_errors=True)
            self.served = None


def _add_dave(db_url: str) -> None:
    from eximauthd.core.hashing import Hasher  # noqa: PLC0415

    db = Database(DatabaseConfig(url=db_url))
    OwnAccountStore(db).add(parse_address(DAVE), Hasher(FAST_HASHING).hash(PASSWORD))
    LimitStore(db).set(DAVE, "messages", parse_limits(["2/1h"]))
    db.dispose()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    db_url = f"sqlite:///{tmp_path_factory.mktemp('postfix') / 'eximauthd.sqlite3'}"
    populate(db_url)
    _add_dave(db_url)
    try:
        with contextlib.ExitStack() as stack:
            postfix = stack.enter_context(postfixkit.prepared_postfix())
            env = (kit.dovecot_env(postfix.auth_socket) | kit.policy_env(postfix.policy_socket)
                   | {"EXIMAUTHD_DOVECOT_AUTH_GROUP": "postfix",
                      "EXIMAUTHD_POSTFIX_POLICY_GROUP": "postfix",
                      # The login attacks below must not lock alice out of the later tests.
                      "EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_IP": "100000",
                      "EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_USER": "100000"})
            running = Rig(postfix, db_url, env)
            running.start_service()
            stack.callback(running.stop_service)
            postfixkit.start(postfix)
            yield running
    except RuntimeError as exc:
        if "postfix" not in str(exc).lower() and "apt-get" not in str(exc):
            raise
        message = f"cannot run a private Postfix: {str(exc)[:2000]}"
        if in_ci():
            pytest.fail(message + " (CI=true: a missing service fails the run)")
        pytest.skip(message)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _login(port: int, how: str, user: str, password: str, authzid: str = "") -> int:
    """One SMTP AUTH the way *how* says (PLAIN or LOGIN, with an initial response or
    without one) after STARTTLS; the final reply code."""
    mech, style = how.split("-")
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.starttls(context=_tls_context())
        smtp.ehlo("client.test")
        if mech == "PLAIN":
            token = _b64(f"{authzid}\0{user}\0{password}")
            if style == "ir":
                return smtp.docmd("AUTH", f"PLAIN {token}")[0]
            code, _ = smtp.docmd("AUTH", "PLAIN")
            assert code == 334
            return smtp.docmd(token)[0]
        if style == "ir":
            code, _ = smtp.docmd("AUTH", f"LOGIN {_b64(user) or '='}")
        else:
            code, _ = smtp.docmd("AUTH", "LOGIN")
            assert code == 334
            code, _ = smtp.docmd(_b64(user))
        assert code == 334
        return smtp.docmd(_b64(password))[0]


HOWS = ["PLAIN-ir", "PLAIN-prompted", "LOGIN-ir", "LOGIN-prompted"]


class TestLogins:
    @pytest.mark.parametrize("how", HOWS)
    @pytest.mark.parametrize(("user", "password"), [
        (ALICE, ""),                        # the classic empty-password attack
        ("nobody@example.test", ""),
        ("", ""),
        ("nobody@example.test", PASSWORD),
        (ALICE, "wrong"),
        ("carol@example.test", PASSWORD),   # disabled
    ], ids=["empty-password", "unknown-empty", "all-empty", "unknown", "wrong", "disabled"])
    def test_bad_login_is_535(self, rig: Rig, how: str, user: str, password: str) -> None:
        """Postfix answers 535 for every login eximauthd refuses, each mechanism and shape."""
        assert _login(rig.port, how, user, password) == 535

    @pytest.mark.parametrize("how", HOWS)
    def test_right_password_is_235(self, rig: Rig, how: str) -> None:
        assert _login(rig.port, how, ALICE, PASSWORD) == 235

    def test_acting_as_another_user_is_535(self, rig: Rig) -> None:
        """PLAIN's authzid other than the login is refused (Postfix does not check it)."""
        assert _login(rig.port, "PLAIN-ir", ALICE, PASSWORD, authzid="bob@example.test") == 535


def _send(rig: Rig, sender: str, rcpts: tuple[str, ...] = ("someone@remote.test",),
          user: str | None = ALICE, **kwargs: object) -> Transcript:
    """One SMTP session with eximkit's client (it only needs a port): STARTTLS, AUTH PLAIN
    as *user* (none: no login), MAIL, RCPTs, DATA when a recipient was accepted."""
    plain = ("", user, PASSWORD) if user is not None else None
    return session(rig.postfix, plain=plain, sender=sender, rcpts=rcpts,  # type: ignore[arg-type]
                   **kwargs)


class TestRelayRule:
    def test_unauthenticated_relay_is_refused_by_postfix(self, rig: Rig) -> None:
        """The policy answers DUNNO to a client that did not log in; Postfix's own
        restrictions (permit_sasl_authenticated, reject) refuse it."""
        assert rig.served is not None
        before = _dunno_count(rig.served)
        out = _send(rig, ALICE, user=None)
        [(code, text)] = out.rcpts
        assert code == 554, text
        # /metrics renders at most once a second: poll until the DUNNO shows.
        served = rig.served
        assert wait_for(lambda: _dunno_count(served) == before + 1)
        assert "check_policy_service" not in text.decode()

    @pytest.mark.parametrize("sender", [
        "ceo@bank.test", "alice@examp1e.test", "alice@example.test.evil.test", "",
    ], ids=["foreign", "look-alike", "suffix", "null"])
    def test_sender_the_login_may_not_use_is_554(self, rig: Rig, sender: str) -> None:
        out = _send(rig, sender)
        assert out.auth is not None
        assert out.auth[0] == 235
        [(code, text)] = out.rcpts
        assert code == 554, text
        assert b"5.7.1 " in text
        assert b"Sender address not allowed for this login" in text
        assert b"sender-mismatch" not in text

    @pytest.mark.parametrize("sender", [ALICE, "sales@partner.test"], ids=["own", "grant"])
    def test_own_or_granted_sender_is_accepted(self, rig: Rig, sender: str) -> None:
        out = _send(rig, sender, rcpts=("someone@remote.test", "other@remote.test"))
        assert [code for code, _ in out.rcpts] == [250, 250], out.rcpts
        assert out.data is not None
        assert out.data[0] == 250

    def test_limit_counts_each_message_once(self, rig: Rig) -> None:
        """Two messages of two recipients pass a limit of two messages; the third is 450
        4.7.1 for each recipient (DEFER_IF_PERMIT)."""
        rcpts = ("a@remote.test", "b@remote.test")
        for _ in range(2):
            out = _send(rig, DAVE, rcpts=rcpts, user=DAVE)
            assert [code for code, _ in out.rcpts] == [250, 250], out.rcpts
        out = _send(rig, DAVE, rcpts=rcpts, user=DAVE)
        assert [code for code, _ in out.rcpts] == [450, 450], out.rcpts
        assert all(b"4.7.1" in text and b"Sending limit reached" in text
                   for _, text in out.rcpts)


class TestServiceDown:
    def test_stopped_fails_closed_and_restarted_reconnects(self, rig: Rig) -> None:
        """With eximauthd stopped mid-session Postfix answers 451 4.3.5 at RCPT, never 250;
        started again, the next session logs in and relays without touching Postfix."""
        out = _send(rig, ALICE, before_rcpt=rig.stop_service)
        assert out.auth is not None
        assert out.auth[0] == 235
        [(code, text)] = out.rcpts
        assert code == 451, text
        assert text.startswith(b"4.3.5 "), text
        rig.start_service()
        out = _send(rig, ALICE)
        assert out.auth is not None
        assert out.auth[0] == 235
        assert [code for code, _ in out.rcpts] == [250], out.rcpts


def _dunno_count(served: kit.Served) -> float:
    _, metrics = kit.http_call(served, "GET", "/metrics")
    for line in metrics.splitlines():
        if line.startswith('eximauthd_requests_total{result="dunno",transport="postfix"'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


