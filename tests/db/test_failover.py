"""``[database] failover_urls`` against the real MariaDB: a node that goes away (a loopback proxy
we cut) is left for the next usable one, the preferred one is used again once it is back, and
with no node usable every request fails (its caller defers) instead of being answered anyway.

The real Galera cases (a node SIGKILLed under load, a node not Synced, the whole cluster down)
are in tests/service/test_galera.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from eximauthd.db import upgrade
from eximauthd.db.engine import Database
from eximauthd.db.failover import is_node_failure, node_health
from eximauthd.errors import StorageError
from eximauthd.settings import DatabaseConfig

from ..servicekit import TcpProxy, free_port
from ..support import MARIADB_HOST, MARIADB_PORT


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A way to the real MariaDB that the test can cut and restore."""
    cut = TcpProxy(MARIADB_HOST, MARIADB_PORT)
    cut.start()
    yield cut
    cut.stop()


def _via(url: str, port: int) -> str:
    return url.replace(f":{MARIADB_PORT}/", f":{port}/")


def _query(db: Database) -> int:
    with db.write("probe") as conn:
        return int(conn.execute(sa.text("SELECT 1")).scalar_one())


@contextlib.contextmanager
def _database(url: str, *failover: str) -> Iterator[Database]:
    db = Database(DatabaseConfig(url=url, failover_urls=failover, connect_timeout=1))
    try:
        yield db
    finally:
        db.dispose()


def test_a_reachable_node_is_usable_and_a_closed_port_is_not(mariadb_url: str) -> None:
    """node_health: empty for the real server, the reason (no URL) for a closed port."""
    with _database(mariadb_url) as db:
        assert node_health(db.primary) == ""
    with _database(_via(mariadb_url, free_port())) as dead:
        assert node_health(dead.primary) == "unreachable (OperationalError 2003)"


def test_a_failed_node_is_left_for_the_next_and_taken_back_when_usable(
        mariadb_url: str, proxy: TcpProxy) -> None:
    """The request that finds url gone fails; the next ones go to the failover node; once url
    answers again, a check moves back to it."""
    upgrade.upgrade(Database(DatabaseConfig(url=mariadb_url)))
    with _database(_via(mariadb_url, proxy.port), mariadb_url) as db:
        assert db.nodes is not None
        assert _query(db) == 1
        assert db.nodes.index == 0
        proxy.stop()
        with pytest.raises(StorageError):
            _query(db)
        assert (db.nodes.index, db.nodes.usable) == (1, True)
        assert _query(db) == 1
        proxy.start()
        db.nodes.choose()
        assert db.nodes.index == 0
        assert _query(db) == 1
        assert db.nodes.changes == 2


def test_a_command_run_while_url_is_down_uses_the_next_node_at_once(
        mariadb_url: str) -> None:
    """The first use checks the nodes: a one-shot command (`eximauthd user passwd`) does not
    fail because url is down when a failover node answers."""
    with _database(_via(mariadb_url, free_port()), mariadb_url) as db:
        assert db.dialect == "mysql"
        assert _query(db) == 1
        assert db.nodes is not None
        assert db.nodes.index == 1


def test_with_no_node_usable_every_request_fails(mariadb_url: str, proxy: TcpProxy) -> None:
    """Both nodes gone: requests fail without being tried; the first node back is used."""
    with _database(_via(mariadb_url, proxy.port), _via(mariadb_url, free_port())) as db:
        assert db.nodes is not None
        assert _query(db) == 1
        proxy.stop()
        with pytest.raises(StorageError):
            _query(db)
        assert db.nodes.usable is False
        with pytest.raises(StorageError, match="no database node usable"):
            _query(db)
        proxy.start()
        db.nodes.choose()
        assert (db.nodes.index, db.nodes.usable) == (0, True)
        assert _query(db) == 1


@pytest.mark.parametrize(("code", "node_failed"), [
    (2003, True), (2013, True), (1047, True), (1290, True),
    (1213, False), (1062, False), (1146, False),
])
def test_only_errors_of_the_node_move_on(code: int, node_failed: bool) -> None:
    """Lost connections, not ready, read-only: the node; a deadlock, a duplicate, a missing
    table: the request (another node would answer the same)."""
    import pymysql  # noqa: PLC0415 - only to build the driver's exception

    exc = sa.exc.OperationalError("x", {}, pymysql.err.OperationalError(code, "m"))
    assert is_node_failure(exc) is node_failed
