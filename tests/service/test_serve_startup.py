"""``eximauthd serve`` before it serves: a database it cannot use stops it, or is waited for.

Real subprocesses on real databases: SQLite, MariaDB, and a MariaDB URL to a closed loopback
port (which fails at once).  Waits are loops with timeouts; nothing asserts a duration.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from eximauthd.cli import startup
from eximauthd.db import upgrade
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig

from .. import servicekit as kit
from ..servicekit import http_call
from ..support import (
    FAST_HASHING_ENV,
    MARIADB_HOST,
    MARIADB_PORT,
    populate,
    rate_env,
    wait_for,
)

CLOSED_PORT_URL = "mysql+pymysql://eximauthd:hunter2@127.0.0.1:1/mail"

Serve = Callable[..., kit.Served]


def _env(db_url: str, socket_path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    return env | FAST_HASHING_ENV | {
        "EXIMAUTHD_DATABASE_URL": db_url,
        "EXIMAUTHD_DATABASE_CONNECT_TIMEOUT": "1",
        "EXIMAUTHD_SOCKET_PATH": socket_path,
        "EXIMAUTHD_HTTP_ENABLED": "false",
    }


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start ``eximauthd serve ARGS`` on a database URL; stdout and stderr go to its log."""
    started: list[kit.Served] = []

    def start(db_url: str, *args: str) -> kit.Served:
        base = Path(tempfile.mkdtemp(prefix="ead-", dir="/tmp"))
        socket_path = str(base / "eximauthd.sock")
        env = _env(db_url, socket_path)
        log_path = base / "service.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "eximauthd", "serve", *args],
                                       env=env, stdout=log, stderr=log, cwd=base)
        served = kit.Served(process, socket_path, "", log_path, env, base)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()
        shutil.rmtree(served.cwd, ignore_errors=True)


def _refused(served: kit.Served) -> str:
    """The one line a refused start wrote, after checking it is one line and exit 3."""
    assert served.process.wait(60) == 3
    lines = served.log().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("eximauthd: error: ")
    assert not os.path.exists(served.socket_path)
    return lines[0]


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eximauthd", *args], capture_output=True,
                          text=True, env=_env(db_url, "unused.sock"), timeout=60, check=False)


class TestRefusesToStart:
    """Without --wait-for-database: exit 3, one line naming the problem, nothing served."""

    def test_unreachable_database(self, serve: Serve) -> None:
        """A MariaDB URL to a closed port: cannot connect, and no password from the URL."""
        line = _refused(serve(CLOSED_PORT_URL))
        assert "cannot connect to the database server" in line
        assert "hunter2" not in line

    def test_sqlite_file_in_a_missing_directory(self, serve: Serve, tmp_path: Path) -> None:
        """The file can be neither opened nor created: named in the error."""
        url = f"sqlite:///{tmp_path / 'absent' / 'eximauthd.sqlite3'}"
        assert "cannot open or create the SQLite file" in _refused(serve(url))

    def test_schema_never_created(self, serve: Serve, mariadb_url: str) -> None:
        """An empty MariaDB database: names `eximauthd db upgrade`."""
        line = _refused(serve(mariadb_url))
        assert line == ("eximauthd: error: the database has no eximauthd tables: "
                        "run `eximauthd db upgrade`")

    def test_schema_at_an_older_revision(self, serve: Serve, mariadb_url: str) -> None:
        """A schema one revision behind: both revisions and the fix named."""
        db = Database(DatabaseConfig(url=mariadb_url))
        upgrade.upgrade(db, "0003")
        db.dispose()
        line = _refused(serve(mariadb_url))
        assert line == (f"eximauthd: error: the database schema is at revision 0003, this "
                        f"eximauthd needs {upgrade.head_revision()}: run `eximauthd db upgrade`")


    @pytest.mark.parametrize("dialect", ["sqlite", "mariadb"])
    def test_schema_of_a_newer_eximauthd(self, serve: Serve, dialect: str, tmp_path: Path,
                                         request: pytest.FixtureRequest) -> None:
        """Another host's newer eximauthd upgraded the shared schema: upgrade eximauthd here,
        not the database (db upgrade cannot fix it), one line and no traceback, on SQLite
        (which serve otherwise upgrades itself) as on MariaDB."""
        url = (f"sqlite:///{tmp_path / 'eximauthd.sqlite3'}" if dialect == "sqlite"
               else request.getfixturevalue("mariadb_url"))
        db = Database(DatabaseConfig(url=url))
        upgrade.upgrade(db)
        with db.primary.begin() as conn:
            versions = sa.table(upgrade.VERSION_TABLE, sa.column("version_num"))
            conn.execute(sa.update(versions).values(version_num="9999"))
        db.dispose()
        line = _refused(serve(url))
        assert line == ("eximauthd: error: the database schema is at revision '9999', newer "
                        f"than this eximauthd knows (its newest is {upgrade.head_revision()}): "
                        "upgrade eximauthd here too")
        upgraded = _cli(url, "db", "upgrade")
        assert upgraded.returncode == 3
        assert upgraded.stderr.splitlines() == [line]


class TestWaitsForTheDatabase:
    """--wait-for-database: starts once the database is usable; SIGTERM still stops it."""

    def test_starts_once_the_sqlite_directory_appears(self, serve: Serve,
                                                      tmp_path: Path) -> None:
        """The database file (upgraded by `eximauthd db upgrade`) arrives; PING says yes."""
        target = tmp_path / "data"
        staging = tmp_path / "staging"
        staging.mkdir()
        served = serve(f"sqlite:///{target / 'eximauthd.sqlite3'}",
                       "--wait-for-database")
        assert wait_for(lambda: "waiting for the database" in served.log(), timeout=30)
        assert served.process.poll() is None
        made = _cli(f"sqlite:///{staging / 'eximauthd.sqlite3'}", "db", "upgrade")
        assert made.returncode == 0, made.stderr
        staging.rename(target)  # at once: the service never sees a half-made file
        kit.wait_ready(served)
        assert served.ask(b"PING\n") == b"yes\n"
        assert served.log().count("waiting for the database") == 1
        assert served.stop() == 0

    def test_starts_once_the_schema_is_created(self, serve: Serve, mariadb_url: str) -> None:
        """MariaDB without eximauthd's tables; `eximauthd db upgrade` meanwhile; PING yes."""
        served = serve(mariadb_url, "--wait-for-database")
        assert wait_for(lambda: "run `eximauthd db upgrade`" in served.log(), timeout=30)
        made = _cli(mariadb_url, "db", "upgrade")
        assert made.returncode == 0, made.stderr
        kit.wait_ready(served)
        assert served.ask(b"PING\n") == b"yes\n"
        assert served.stop() == 0

    def test_sigterm_while_waiting_exits_zero(self, serve: Serve) -> None:
        """A stop during the wait is a clean stop: exit 0, logged, no socket left."""
        served = serve(CLOSED_PORT_URL, "--wait-for-database")
        assert wait_for(lambda: "waiting for the database" in served.log(), timeout=30)
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(30) == 0
        assert served.log().splitlines()[-1].endswith(" info eximauthd.serve: stopped")
        assert "hunter2" not in served.log()
        assert not os.path.exists(served.socket_path)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_waiting_logs_once_a_minute_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    """Ten minutes down: ten warnings, not hundreds; retries back off to MAX_DELAY_S."""
    clock = _Clock()
    caplog.set_level(logging.INFO, logger="eximauthd.serve")
    startup.wait_for_database(lambda: "cannot connect" if clock.now < 600 else None,
                              clock=clock, sleep=clock.sleep)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 10
    assert warnings[0] == "waiting for the database (--wait-for-database): cannot connect"
    assert all(w.startswith("still waiting for the database after ") for w in warnings[1:])
    assert clock.sleeps[:3] == [startup.FIRST_DELAY_S, 2 * startup.FIRST_DELAY_S,
                                4 * startup.FIRST_DELAY_S]
    assert max(clock.sleeps) == startup.MAX_DELAY_S
    assert caplog.records[-1].getMessage().startswith("database ready after ")


def test_a_stop_that_lands_while_a_line_is_written_still_stops() -> None:
    """SIGTERM inside a log handler's write: the wait ends with Stopped, not a logging error.

    logging's handlers catch every Exception of their stream (and print "--- Logging error
    ---"); a stop that landed there would be swallowed and the wait would go on.
    """

    class Tripping(io.StringIO):
        def write(self, text: str) -> int:
            signal.raise_signal(signal.SIGTERM)
            return super().write(text)

    clock = _Clock()
    handler = logging.StreamHandler(Tripping())
    logger = logging.getLogger("eximauthd.serve")
    logger.addHandler(handler)
    try:
        with pytest.raises(startup.Stopped), startup.stoppable():
            startup.wait_for_database(lambda: "cannot connect" if clock.now < 600 else None,
                                      clock=clock, sleep=clock.sleep)
    finally:
        logger.removeHandler(handler)
    assert clock.sleeps == []  # stopped at the first line, before any retry


def test_a_ready_database_is_not_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    """No sleep and no line when the first look finds it usable."""
    clock = _Clock()
    caplog.set_level(logging.INFO, logger="eximauthd.serve")
    startup.wait_for_database(lambda: None, clock=clock, sleep=clock.sleep)
    assert (clock.sleeps, caplog.records) == ([], [])


def test_repeated_warnings_of_a_running_service_are_counted_not_repeated(
        mariadb_url: str) -> None:
    """Database cut: rate syncs (10 a second) and readiness fail over and over; one line each."""
    populate(mariadb_url)
    proxy = kit.TcpProxy(MARIADB_HOST, MARIADB_PORT)
    proxy.start()
    url = mariadb_url.replace(f":{MARIADB_PORT}/", f":{proxy.port}/")

    def sync_errors(served: kit.Served) -> float:
        metrics = http_call(served, "GET", "/metrics")[1]
        found = re.search(r"^eximauthd_ratelimit_sync_errors_total (\S+)$", metrics, re.M)
        return float(found.group(1)) if found else 0.0

    try:
        with kit.running(url, extra_env=rate_env()) as served:
            proxy.stop()
            for _ in range(5):
                assert served.ask(b"PING\n") == b"defer database-unavailable\n"
            assert wait_for(lambda: sync_errors(served) >= 10, timeout=60)
            log = served.log()
    finally:
        proxy.stop()
    # One line per distinct failure: the pooled connection the cut killed ("lost connection",
    # once), then the connects that fail ("cannot connect", once, however often it happens).
    sync = [line.split(": ", 1)[1] for line in log.splitlines()
            if "rate counters not synchronised" in line]
    assert 1 <= len(sync) <= 2, sync
    assert len(set(sync)) == len(sync), sync
    assert "cannot connect to the database server" in sync[-1], sync
    assert log.count("not ready: ") == 1
