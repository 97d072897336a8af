"""End to end against real Exim 4.96 with its `dovecot` driver asking eximauthd's Dovecot socket.

The shipped `dovecot` snippets (hand-written and Debian split), a real ``eximauthd serve`` on
MariaDB (through a proxy we can cut) with ``[dovecot_auth]`` enabled, and an SMTP sink that
receives whatever Exim relays.  The rcpt ACL is the readsocket one: the relay rule is the
same whichever way AUTH was answered.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from .. import eximkit
from .. import servicekit as kit
from ..support import (
    MARIADB_HOST,
    MARIADB_PORT,
    PASSWORD,
    create_mariadb_database,
    drop_mariadb_database,
    in_ci,
    populate,
)

pytestmark = pytest.mark.exim

ALICE = "alice@example.test"
REMOTE = ("someone@remote.test",)
BUILDERS = {"handwritten": eximkit.build_handwritten_dovecot,
            "debian-split": eximkit.build_debian_split_dovecot}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(authzid: str, user: str, password: str) -> str:
    return b64(f"{authzid}\0{user}\0{password}")


@dataclass
class Rig:
    """Service (readsocket + Dovecot sockets) + Exim + sink; the service can be stopped."""

    db_url: str
    proxy: kit.TcpProxy
    socket_path: str
    service: kit.Served | None = None
    exim: eximkit.Exim | None = None

    def start_service(self) -> None:
        group = "Debian-exim"
        self.service = kit.start_service(self.db_url, extra_env={
            "EXIMAUTHD_SOCKET_PATH": self.socket_path, "EXIMAUTHD_SOCKET_GROUP": group,
            "EXIMAUTHD_DOVECOT_AUTH_GROUP": group,
        } | kit.dovecot_env(eximkit.dovecot_socket(self.socket_path)))

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    @property
    def ex(self) -> eximkit.Exim:
        assert self.exim is not None
        return self.exim


def _require_exim() -> None:
    if eximkit.exim_available() and shutil.which("openssl"):
        return
    if in_ci():
        pytest.fail("exim4 (exim4-daemon-heavy) is not installed (CI=true: must not skip)")
    pytest.skip("exim4 is not installed")


@pytest.fixture(scope="module", params=list(BUILDERS))
def rig(request: pytest.FixtureRequest, mariadb_admin: sa.Engine) -> Iterator[Rig]:
    """Per Exim configuration: a MariaDB test database behind a proxy, the service, Exim."""
    _require_exim()
    name = create_mariadb_database(mariadb_admin)
    direct = f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    populate(direct)
    proxy = kit.TcpProxy(MARIADB_HOST, MARIADB_PORT)
    proxy.start()
    sock_dir = Path(tempfile.mkdtemp(prefix="eadv-", dir="/tmp"))
    sock_dir.chmod(0o755)
    rig = Rig(direct.replace(f":{MARIADB_PORT}/", f":{proxy.port}/"), proxy,
              str(sock_dir / "eximauthd.sock"))
    rig.start_service()
    try:
        with eximkit.running_exim(rig.socket_path, BUILDERS[request.param]) as exim:
            rig.exim = exim
            yield rig
    finally:
        rig.stop_service()
        proxy.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
        drop_mariadb_database(mariadb_admin, name)


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
        for path in (rig.socket_path, eximkit.dovecot_socket(rig.socket_path)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        rig.start_service()


def _nothing_relayed(exim: eximkit.Exim) -> bool:
    time.sleep(0.5)  # a wrongly accepted message would be delivered within this
    return exim.sink.envelopes == []


# The raw AUTH exchanges: the command's argument, then what is sent after each 334.
ATTACKS = {
    # the classic empty-password attack, PLAIN with an initial response (AUTH PLAIN AAA=)
    "plain-ir-empty-both": (f"PLAIN {plain('', '', '')}",),
    "plain-ir-unknown-empty": (f"PLAIN {plain('', 'nobody@example.test', '')}",),
    "plain-ir-known-empty": (f"PLAIN {plain('', ALICE, '')}",),
    "plain-ir-empty-user": (f"PLAIN {plain('', '', PASSWORD)}",),
    # ... and without one: an empty challenge, then the message
    "plain-empty-both": ("PLAIN", plain("", "", "")),
    "plain-known-empty": ("PLAIN", plain("", ALICE, "")),
    "plain-rfc4954-empty": ("PLAIN =",),
    # LOGIN: Username:, Password:; an initial response is the username ("=" an empty one)
    "login-empty-both": ("LOGIN", "", ""),
    "login-known-empty": ("LOGIN", b64(ALICE), ""),
    "login-ir-empty-both": ("LOGIN =", ""),
    "login-ir-known-empty": (f"LOGIN {b64(ALICE)}", ""),
    # wrong, unknown, disabled, acting as someone else
    "plain-wrong": (f"PLAIN {plain('', ALICE, 'wrong')}",),
    "plain-unknown": (f"PLAIN {plain('', 'nobody@example.test', PASSWORD)}",),
    "plain-disabled": (f"PLAIN {plain('', 'carol@example.test', PASSWORD)}",),
    "plain-authzid-other": (f"PLAIN {plain('bob@example.test', ALICE, PASSWORD)}",),
    "plain-authzid-victim": ("PLAIN", plain(ALICE, "bob@example.test", PASSWORD)),
    "login-wrong": ("LOGIN", b64(ALICE), b64("wrong")),
    "login-disabled": (f"LOGIN {b64('carol@example.test')}", b64(PASSWORD)),
}


class TestRefused:
    """Nothing but the right password of an enabled account authenticates."""

    @pytest.mark.parametrize("exchange", list(ATTACKS.values()), ids=list(ATTACKS))
    def test_535_and_nothing_relayed(self, exim: eximkit.Exim,
                                     exchange: tuple[str, ...]) -> None:
        """535 at AUTH; the unauthenticated RCPT to a remote domain is then refused."""
        t = eximkit.session(exim, auth=exchange, sender=ALICE, rcpts=REMOTE)
        assert t.auth is not None
        assert t.auth[0] == 535, t.auth
        assert [code for code, _ in t.rcpts] == [550]
        assert _nothing_relayed(exim)
        assert "A=eximauthd_plain: " not in exim.mainlog()
        assert "A=eximauthd_login: " not in exim.mainlog()


class TestAccepted:
    """The right password relays, with the login as $authenticated_id."""

    @pytest.mark.parametrize(("name", "exchange"), [
        ("plain", (f"PLAIN {plain('', 'Alice@Example.TEST', PASSWORD)}",)),
        ("plain", ("PLAIN", plain(ALICE, ALICE, PASSWORD))),
        ("login", ("LOGIN", b64(ALICE), b64(PASSWORD))),
        ("login", (f"LOGIN {b64(ALICE)}", b64(PASSWORD))),
    ], ids=["plain-ir-mixed-case", "plain-authzid-self", "login", "login-ir"])
    def test_235_relays_and_logs_the_login(self, rig: Rig, exim: eximkit.Exim, name: str,
                                           exchange: tuple[str, ...]) -> None:
        """235, decided over the Dovecot socket; the readsocket rcpt ACL (which refuses an
        empty id) lets the own address relay; the mainlog shows A=<authenticator>:<login>."""
        t = eximkit.session(exim, auth=exchange, sender=ALICE, rcpts=REMOTE)
        assert t.auth == (235, b"Authentication succeeded")
        assert [code for code, _ in t.rcpts] == [250]
        assert exim.wait_for_sink(1)
        deadline = time.monotonic() + 10
        while f"A=eximauthd_{name}:{ALICE} " not in exim.mainlog() \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "P=esmtpsa" in exim.mainlog()
        assert f"A=eximauthd_{name}:{ALICE} " in exim.mainlog()
        assert rig.service is not None
        assert any(f"mech={name.upper()}" in line and "result=yes" in line
                   and line.endswith("via=dovecot") for line in rig.service.log().splitlines())

    def test_foreign_sender_refused_at_rcpt(self, exim: eximkit.Exim) -> None:
        """Authenticated through the Dovecot socket, the relay rule still holds: 550."""
        t = eximkit.session(exim, auth=(f"PLAIN {plain('', ALICE, PASSWORD)}",),
                            sender="spam@elsewhere.test", rcpts=REMOTE)
        assert t.auth == (235, b"Authentication succeeded")
        assert [code for code, _ in t.rcpts] == [550]
        assert b"not permitted" in t.rcpts[0][1]
        assert _nothing_relayed(exim)


class TestFailClosed:
    """Service stopped or database down: 435 at AUTH, never 235; back: 235."""

    GOOD = (f"PLAIN {plain('', ALICE, PASSWORD)}",)

    def test_service_stopped_gives_435_then_recovers(self, rig: Rig,
                                                     exim: eximkit.Exim) -> None:
        """No socket: 435 for the right and the empty password alike; restarted: 235."""
        rig.stop_service()
        for exchange in (self.GOOD, (f"PLAIN {plain('', '', '')}",)):
            t = eximkit.session(exim, auth=exchange, sender=ALICE, rcpts=REMOTE)
            assert t.auth is not None
            assert t.auth[0] == 435, t.auth
        assert _nothing_relayed(exim)
        rig.start_service()
        t = eximkit.session(exim, auth=self.GOOD, sender=ALICE, rcpts=REMOTE)
        assert t.auth == (235, b"Authentication succeeded")
        assert exim.wait_for_sink(1)

    def test_database_down_gives_435(self, rig: Rig, exim: eximkit.Exim) -> None:
        """The service cannot decide: it closes the connection, Exim answers 435."""
        rig.proxy.stop()
        t = eximkit.session(exim, auth=self.GOOD, sender=ALICE, rcpts=REMOTE)
        assert t.auth is not None
        assert t.auth[0] == 435, t.auth
        assert _nothing_relayed(exim)
        assert rig.service is not None
        assert "via=dovecot" in rig.service.log()
        rig.proxy.start()
        t = eximkit.session(exim, auth=self.GOOD, sender=ALICE, rcpts=REMOTE)
        assert t.auth == (235, b"Authentication succeeded")
