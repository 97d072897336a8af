"""End to end against real Exim 4.96: the shipped snippets close the seed's open relay.

A private Exim daemon (config = minimal main section + exim-snippets/*), a real
``eximauthd serve`` on MariaDB, and an SMTP sink that receives whatever Exim relays.  Every test
asserts SMTP codes *and* what reached the sink.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from . import eximkit
from . import servicekit as kit
from .conftest import (
    MARIADB_HOST,
    MARIADB_PORT,
    _create_mariadb_database,
    _drop_mariadb_database,
    in_ci,
)
from .test_service import PASSWORD, _populate

pytestmark = pytest.mark.exim


def _require_exim() -> None:
    if eximkit.exim_available() and shutil.which("openssl"):
        return
    if in_ci():
        pytest.fail("exim4 (exim4-daemon-heavy) is not installed (CI=true: must not skip)")
    pytest.skip("exim4 is not installed")


@dataclass
class Rig:
    """Service + Exim + sink, with the service replaceable under the same socket path."""

    db_url: str
    proxy: kit.TcpProxy
    socket_path: str
    service: kit.Served | None
    exim: eximkit.Exim | None = None

    def start_service(self) -> None:
        self.service = kit.start_service(self.db_url, extra_env={
            "EXIMAUTHD_SOCKET_PATH": self.socket_path,
            "EXIMAUTHD_SOCKET_GROUP": "Debian-exim",
            "EXIMAUTHD_POLICY_STRICT_DOMAINS": "strict.test",
        })

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    @property
    def ex(self) -> eximkit.Exim:
        assert self.exim is not None
        return self.exim


@pytest.fixture(scope="module")
def rig(mariadb_admin: sa.Engine) -> Iterator[Rig]:
    """Started once per module: MariaDB test database (via a cuttable proxy), service, Exim."""
    _require_exim()
    name = _create_mariadb_database(mariadb_admin)
    direct = f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    _populate(direct)
    _add_strict_users(direct)
    proxy = kit.TcpProxy(MARIADB_HOST, MARIADB_PORT)
    proxy.start()
    sock_dir = Path(tempfile.mkdtemp(prefix="eadx-", dir="/tmp"))
    sock_dir.chmod(0o755)
    rig = Rig(direct.replace(f":{MARIADB_PORT}/", f":{proxy.port}/"), proxy,
              str(sock_dir / "eximauthd.sock"), None)
    rig.start_service()
    try:
        with eximkit.running_exim(rig.socket_path) as exim:
            rig.exim = exim
            yield rig
    finally:
        rig.stop_service()
        proxy.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
        _drop_mariadb_database(mariadb_admin, name)


def _add_strict_users(url: str) -> None:
    from eximauthd.addresses import parse_address  # noqa: PLC0415
    from eximauthd.config import DatabaseConfig  # noqa: PLC0415
    from eximauthd.hashing import Hasher  # noqa: PLC0415
    from eximauthd.store import Database, OwnAccountStore  # noqa: PLC0415

    from .conftest import FAST_HASHING  # noqa: PLC0415

    db = Database(DatabaseConfig(url=url))
    store, hasher = OwnAccountStore(db), Hasher(FAST_HASHING)
    for name in ("dave", "erin"):
        store.add(parse_address(f"{name}@strict.test"), hasher.hash(PASSWORD))
    db.dispose()


@pytest.fixture
def exim(rig: Rig) -> Iterator[eximkit.Exim]:
    """The rig's Exim with an empty sink and a running service, restored after each test."""
    if rig.service is None:
        rig.start_service()
    rig.ex.sink.envelopes.clear()
    yield rig.ex
    rig.proxy.stop()
    rig.proxy.start()
    if rig.service is None or rig.service.process.poll() is not None:
        rig.stop_service()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rig.socket_path)
        rig.start_service()


GOOD = ("", "alice@example.test", PASSWORD)
REMOTE = ("someone@remote.test",)


def _nothing_relayed(exim: eximkit.Exim) -> bool:
    time.sleep(0.5)  # a wrongly accepted message would be delivered within this
    return exim.sink.envelopes == []


class TestSeedAttack:
    """The seed's attack: authenticating with empty or unknown credentials."""

    @pytest.mark.parametrize("plain", [
        ("", "", ""),                                  # AUTH PLAIN AAA=
        ("", "nobody@example.test", ""),               # unknown user, empty password
        ("", "alice@example.test", ""),                # known user, empty password
        ("", "", PASSWORD),
        ("bob@example.test", "alice@example.test", PASSWORD),  # acting as someone else
    ], ids=["empty-both", "unknown-empty", "known-empty", "empty-user", "authzid"])
    def test_plain_refused_and_nothing_relayed(self, exim: eximkit.Exim,
                                               plain: tuple[str, str, str]) -> None:
        """535, then the unauthenticated RCPT to a remote domain is refused."""
        t = eximkit.session(exim, plain=plain, sender="alice@example.test", rcpts=REMOTE)
        assert t.auth is not None
        assert t.auth[0] == 535
        assert [code for code, _ in t.rcpts] == [550]
        assert _nothing_relayed(exim)

    @pytest.mark.parametrize("login", [("", ""), ("nobody@example.test", ""),
                                       ("alice@example.test", "")])
    def test_login_with_empty_fields_refused(self, exim: eximkit.Exim,
                                             login: tuple[str, str]) -> None:
        """AUTH LOGIN with empty username or password is 535."""
        t = eximkit.session(exim, login=login, sender="alice@example.test", rcpts=REMOTE)
        assert t.auth is not None
        assert t.auth[0] == 535
        assert _nothing_relayed(exim)

    def test_auth_is_not_offered_without_tls(self, exim: eximkit.Exim) -> None:
        """Passwords never cross the wire in clear: AUTH before STARTTLS is refused."""
        t = eximkit.session(exim, plain=GOOD, sender="alice@example.test", rcpts=REMOTE,
                            tls=False)
        assert t.auth is not None
        assert t.auth[0] == 503
        assert _nothing_relayed(exim)


class TestCredentials:
    """Wrong credentials never authenticate."""

    @pytest.mark.parametrize("plain", [
        ("", "alice@example.test", "wrong"),
        ("", "carol@example.test", PASSWORD),                # disabled
        ("", "alice@example.test' OR '1'='1", PASSWORD),
        ("", "' OR 1=1 -- @example.test", "x"),
        ("", "alice@example.test\\", PASSWORD + "'"),
    ], ids=["wrong", "disabled", "sqli-user", "sqli-local", "quotes"])
    def test_refused_with_535(self, exim: eximkit.Exim, plain: tuple[str, str, str]) -> None:
        """535 and no relay."""
        t = eximkit.session(exim, plain=plain, sender="alice@example.test", rcpts=REMOTE)
        assert t.auth is not None
        assert t.auth[0] == 535
        assert _nothing_relayed(exim)

    @pytest.mark.parametrize("mech", ["plain", "login"])
    def test_positive_control_relays(self, exim: eximkit.Exim, mech: str) -> None:
        """The right password: 235, own address as sender, the message reaches the sink."""
        kwargs = ({"plain": GOOD} if mech == "plain"
                  else {"login": ("alice@example.test", PASSWORD)})
        t = eximkit.session(exim, sender="alice@example.test", rcpts=REMOTE,
                            **kwargs)  # type: ignore[arg-type]
        assert t.auth == (235, b"Authentication succeeded")
        assert [code for code, _ in t.rcpts] == [250]
        assert t.data is not None
        assert t.data[0] == 250
        assert exim.wait_for_sink(1)
        assert exim.sink.recipients() == ["someone@remote.test"]
        log = exim.mainlog()
        assert f"A=eximauthd_{mech}:alice@example.test" in log
        assert "A=eximauthd_plain: " not in log
        assert "A=eximauthd_login: " not in log


class TestSenderPolicy:
    """Authenticated, but the envelope sender must belong to the login."""

    @pytest.mark.parametrize(("plain", "sender"), [
        (GOOD, "spam@elsewhere.test"),
        (GOOD, "alice@example.test.evil"),
        (GOOD, ""),                                                   # null sender
        (("", "dave@strict.test", PASSWORD), "erin@strict.test"),     # strict domain
    ], ids=["other-domain", "look-alike", "null-sender", "strict-other-user"])
    def test_remote_rcpt_denied_550(self, exim: eximkit.Exim, plain: tuple[str, str, str],
                                    sender: str) -> None:
        """5xx at RCPT and nothing in the sink."""
        t = eximkit.session(exim, plain=plain, sender=sender, rcpts=REMOTE)
        assert t.auth == (235, b"Authentication succeeded")
        assert len(t.rcpts) == 1
        assert t.rcpts[0][0] == 550
        assert b"not permitted" in t.rcpts[0][1]
        assert _nothing_relayed(exim)

    def test_same_domain_and_strict_own_address_relay(self, exim: eximkit.Exim) -> None:
        """Same domain by default; in a strict domain the user's own address."""
        t1 = eximkit.session(exim, plain=GOOD, sender="bob@example.test", rcpts=REMOTE)
        t2 = eximkit.session(exim, plain=("", "dave@strict.test", PASSWORD),
                             sender="dave@strict.test", rcpts=("other@remote.test",))
        assert [c for c, _ in t1.rcpts + t2.rcpts] == [250, 250]
        assert exim.wait_for_sink(2)

    def test_grant_allows_partner_domain(self, exim: eximkit.Exim) -> None:
        """alice has a send-as grant for @partner.test."""
        t = eximkit.session(exim, plain=GOOD, sender="news@partner.test", rcpts=REMOTE)
        assert [c for c, _ in t.rcpts] == [250]
        assert exim.wait_for_sink(1)


class TestUnauthenticated:
    """Mail without AUTH behaves as before."""

    def test_relay_denied_local_delivery_accepted(self, exim: eximkit.Exim) -> None:
        """Remote recipient 550; local recipient accepted and delivered."""
        t = eximkit.session(exim, sender="someone@outside.test",
                            rcpts=("victim@remote.test", "bob@example.test"))
        assert [c for c, _ in t.rcpts] == [550, 250]
        assert t.data is not None
        assert t.data[0] == 250
        deadline = time.monotonic() + 15
        while "hello" not in exim.local_mail() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "Envelope-to: bob@example.test" in exim.local_mail()
        assert "hello" in exim.local_mail()
        assert _nothing_relayed(exim)


class _FakeService:
    """Something else on the service's socket: garbage answers or no answer in time."""

    def __init__(self, path: str, reply: bytes, delay: float) -> None:
        self.path, self.reply, self.delay = path, reply, delay
        self.sock = socket.socket(socket.AF_UNIX)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock.bind(path)
        exim_gid = pwd.getpwnam("Debian-exim").pw_gid
        os.chown(path, -1, exim_gid)
        os.chmod(path, 0o660)
        self.sock.listen(16)
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(4096)
            time.sleep(self.delay)
            conn.sendall(self.reply)

    def close(self) -> None:
        self.stopped = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class TestFailClosed:
    """Socket down, slow, garbage, DB down: 4xx, never accept; back again: works."""

    def test_service_stopped_auth_gets_4xx_and_rcpt_gets_4xx(self, rig: Rig,
                                                           exim: eximkit.Exim) -> None:
        """AUTH while stopped: 435.  RCPT after an AUTH made before the stop: 451."""
        t = eximkit.session(exim, plain=GOOD, sender="alice@example.test", rcpts=REMOTE,
                            before_rcpt=rig.stop_service)
        assert t.auth == (235, b"Authentication succeeded")
        assert [c for c, _ in t.rcpts] == [451]
        t2 = eximkit.session(exim, plain=GOOD, sender="alice@example.test", rcpts=REMOTE)
        assert t2.auth is not None
        assert t2.auth[0] == 435
        assert _nothing_relayed(exim)
        rig.start_service()  # back, without restarting Exim
        t3 = eximkit.session(exim, plain=GOOD, sender="alice@example.test", rcpts=REMOTE)
        assert t3.auth == (235, b"Authentication succeeded")
        assert exim.wait_for_sink(1)

    @pytest.mark.parametrize(("reply", "delay"), [
        (b"garbage\n", 0.0), (b"yes\nyes\n", 0.0), (b"", 0.0), (b"yes\n", 7.0),
    ], ids=["garbage", "two-lines", "empty", "too-slow"])
    def test_bad_service_answers_give_4xx(self, rig: Rig, exim: eximkit.Exim, reply: bytes,
                                          delay: float) -> None:
        """Anything but an exact yes/no in time is a temporary failure at AUTH and RCPT."""
        t_before = None

        def swap() -> None:
            nonlocal t_before
            rig.stop_service()
            t_before = _FakeService(rig.socket_path, reply, delay)

        rig.stop_service()
        fake = _FakeService(rig.socket_path, reply, delay)
        try:
            t = eximkit.session(exim, plain=GOOD, sender="alice@example.test", rcpts=REMOTE)
            assert t.auth is not None
            assert t.auth[0] == 435
        finally:
            fake.close()
        # RCPT in an already authenticated session, then the service goes bad.
        rig.start_service()
        t = eximkit.session(exim, plain=GOOD, sender="alice@example.test", rcpts=REMOTE,
                            before_rcpt=swap)
        try:
            assert t.auth == (235, b"Authentication succeeded")
            assert [c for c, _ in t.rcpts] == [451]
        finally:
            if t_before is not None:
                t_before.close()
        assert _nothing_relayed(exim)

    def test_database_down_gives_4xx_then_recovers(self, rig: Rig, exim: eximkit.Exim) -> None:
        """DB unreachable: AUTH 435; DB back: 235 again, no restart of anything."""
        rig.proxy.stop()
        t = eximkit.session(exim, plain=GOOD, sender="alice@example.test", rcpts=REMOTE)
        assert t.auth is not None
        assert t.auth[0] == 435
        assert _nothing_relayed(exim)
        rig.proxy.start()
        t = eximkit.session(exim, plain=GOOD, sender="alice@example.test", rcpts=REMOTE)
        assert t.auth == (235, b"Authentication succeeded")
        assert exim.wait_for_sink(1)
