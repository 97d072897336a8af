"""The login lookup sent as a prepared statement inside the throttle's count (AUTH's path):
hostile usernames and hostile stored values never find a row that is not exactly the login,
and a legacy table of binary and integer columns still finds exactly the right one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from eximauthd.core.decision import Decision, Result
from eximauthd.core.protocol import AuthRequest
from eximauthd.db import tables, upgrade
from eximauthd.db.engine import Database
from eximauthd.service.decider import Decider
from eximauthd.settings import DatabaseConfig, LegacyConfig

from ..support import config_for, decide_auth

PASSWORD = "correct horse battery staple"
IP = "192.0.2.10"

BINARY_LEGACY = LegacyConfig(
    table="mailbox", address_column="email", password_column="pw",
    enabled_column="active", enabled_when="> 0", enabled_value="1", disabled_value="0",
)


def _auth(decider: Decider, user: str, password: str = PASSWORD) -> Decision:
    return decide_auth(decider, AuthRequest("PLAIN", user, password, IP))


@pytest.fixture
def own(db_url: str, hasher: Any) -> Iterator[tuple[Decider, Database, str]]:
    db = Database(DatabaseConfig(url=db_url))
    upgrade.upgrade(db)
    decider = Decider(config_for(db_url), db=db)
    try:
        yield decider, db, hasher.hash(PASSWORD)
    finally:
        decider.close()


def _put_own(db: Database, address: str, stored: str, domain: str = "example.test") -> None:
    with db.write("test rows") as conn:
        conn.execute(sa.insert(tables.users).values(address=address, domain=domain,
                                                    password_hash=stored, enabled=True))


@pytest.mark.parametrize("user", [
    "o'brien@example.test", "back\\slash@example.test", "%(login0)s@example.test",
    "?@example.test", "x'or'1'='1@example.test", "a\"b@example.test"])
def test_hostile_usernames_find_only_their_own_row(
        own: tuple[Decider, Database, str], user: str) -> None:
    """Quotes, backslashes and the drivers' placeholders in a login are data: the hostile
    login with the right password for *another* row is refused, and the table is intact."""
    decider, db, stored = own
    _put_own(db, "victim@example.test", stored)
    assert _auth(decider, user).result is not Result.YES
    assert _auth(decider, "victim@example.test").result is Result.YES
    with db.primary.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.users)).scalar() == 1


@pytest.mark.parametrize("stored", [
    "boss@müller.test", "BOSS@muller.test", "boss@muller.test ", "boss@muller.test\x00",
    "boss@muller.tesT"])
def test_a_lookalike_own_row_never_authenticates(
        own: tuple[Decider, Database, str], stored: str) -> None:
    """A row whose address only a collation calls equal to the login is not the login's
    account, through the lookup read with the throttle's count too."""
    decider, db, argon = own
    _put_own(db, stored, argon, domain=stored.split("@")[1])
    assert _auth(decider, "boss@muller.test").result is Result.NO


@pytest.fixture
def binary_legacy(mariadb_url: str, hasher: Any) -> Iterator[tuple[Decider, sa.Table, str]]:
    """A legacy table on MariaDB whose address is VARBINARY and whose flag is INT: the driver
    hands back bytes and ints, with no type processing in between.  (A VARBINARY hash column
    is refused as an unknown scheme, before and after prepared statements: fail closed.)"""
    db = Database(DatabaseConfig(url=mariadb_url))
    upgrade.upgrade(db)
    table = sa.Table("mailbox", sa.MetaData(),
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                     sa.Column("email", sa.VARBINARY(320), nullable=False, index=True),
                     sa.Column("pw", sa.String(255), nullable=True),
                     sa.Column("active", sa.Integer, nullable=False))
    table.create(db.primary)
    decider = Decider(config_for(mariadb_url, BINARY_LEGACY), db=db)
    try:
        yield decider, table, hasher.hash(PASSWORD)
    finally:
        decider.close()


def _put(decider: Decider, table: sa.Table, email: str, stored: str, active: int = 1) -> None:
    with decider.db.write("test rows") as conn:
        conn.execute(sa.insert(table).values(email=email.encode(), pw=stored,
                                             active=active))


def test_a_binary_legacy_row_authenticates_its_exact_login_only(
        binary_legacy: tuple[Decider, sa.Table, str]) -> None:
    decider, table, argon = binary_legacy
    _put(decider, table, "boss@müller.test", argon)
    _put(decider, table, "BOSS@muller.test", argon)
    _put(decider, table, "off@muller.test", argon, active=0)
    assert _auth(decider, "boss@muller.test").result is Result.NO
    assert _auth(decider, "off@muller.test").result is Result.NO
    _put(decider, table, "boss@muller.test", argon)
    assert _auth(decider, "boss@muller.test").result is Result.YES
    assert _auth(decider, "boss@muller.test", "wrong").result is Result.NO
