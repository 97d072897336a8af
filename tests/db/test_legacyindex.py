"""The legacy table's login index: reported when missing, with the statement that makes it,
created by that statement (proved by the database's own plan), never created twice.

Real SQLite files and MariaDB databases.  "Has a usable index" is the inspector's (MariaDB) or
SQLite's plan's answer; the EXPLAIN proofs on MariaDB use enough rows that the optimizer's
choice is the index, not a scan of a tiny table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import sqlalchemy as sa

from eximauthd.core.addresses import parse_address
from eximauthd.db.accounts import LegacyAccountStore
from eximauthd.db.engine import Database
from eximauthd.db.legacyindex import (
    Explain,
    check_legacy_index,
    create_legacy_index,
    legacy_index_warning,
)
from eximauthd.errors import ConfigError, SchemaMissingError
from eximauthd.settings import DatabaseConfig, LegacyConfig

from ..support import ADDRESS_LEGACY, SEED_LEGACY

# The address layout on a table whose address column is not its primary key.
ADDRESS_ONLY = replace(ADDRESS_LEGACY, table="accounts")
LAYOUTS = {"parts": SEED_LEGACY, "address": ADDRESS_ONLY}


def make_legacy_table(db: Database, legacy: LegacyConfig) -> sa.Table:
    """An unindexed legacy table in *legacy*'s layout: an id primary key and plain columns."""
    address = ([sa.Column(legacy.address_column, sa.String(320), nullable=False)]
               if legacy.address_column else
               [sa.Column(legacy.local_part_column, sa.String(64), nullable=False),
                sa.Column(legacy.domain_column, sa.String(255), nullable=False)])
    table = sa.Table(legacy.table, sa.MetaData(),
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                     *address,
                     sa.Column(legacy.password_column, sa.String(255)),
                     sa.Column(legacy.enabled_column, sa.String(8)))
    table.create(db.primary)
    return table


def fill(db: Database, table: sa.Table, legacy: LegacyConfig, count: int) -> None:
    """*count* rows user0@d0.test ..., spread over ten domains."""
    def row(i: int) -> dict[str, str]:
        local, domain = f"user{i}", f"d{i % 10}.test"
        parts = ({legacy.address_column: f"{local}@{domain}"} if legacy.address_column
                 else {legacy.local_part_column: local, legacy.domain_column: domain})
        return parts | {legacy.password_column: "x", legacy.enabled_column: "1"}
    with db.primary.begin() as conn:
        conn.execute(sa.insert(table), [row(i) for i in range(count)])


def index_count(db: Database, table: str) -> int:
    with db.primary.connect() as conn:
        if db.dialect == "sqlite":
            # The inspector skips expression indexes; SQLite's own list has them all.
            return len(conn.exec_driver_sql(f'PRAGMA index_list("{table}")').all())
        return len(sa.inspect(conn).get_indexes(table))


@pytest.fixture
def plain_db(db_url: str) -> Iterator[Database]:
    """An empty database on each backend (no eximauthd schema: the legacy table is all)."""
    db = Database(DatabaseConfig(url=db_url))
    yield db
    db.dispose()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_unindexed_table_is_reported_with_the_statement_that_indexes_it(
        plain_db: Database, layout: str) -> None:
    """No index on the login columns: not indexed, one warning line naming CREATE INDEX."""
    legacy = LAYOUTS[layout]
    make_legacy_table(plain_db, legacy)
    check = check_legacy_index(plain_db, legacy)
    assert not check.indexed
    assert check.statement.startswith("CREATE INDEX ")
    if plain_db.dialect == "sqlite":
        # The lookup compares lower(column): only an index on that expression serves it.
        assert "lower(" in check.statement
    else:
        assert check.statement.endswith("ALGORITHM=INPLACE LOCK=NONE")
        assert "lower(" not in check.statement
    warning = legacy_index_warning(plain_db, legacy)
    assert warning is not None
    assert "\n" not in warning
    assert check.statement in warning
    assert "eximauthd db index-legacy --apply" in warning


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_created_index_serves_the_lookup_and_creating_it_again_changes_nothing(
        plain_db: Database, layout: str) -> None:
    """After create_legacy_index the check finds that index; a second run creates none."""
    legacy = LAYOUTS[layout]
    make_legacy_table(plain_db, legacy)
    before = index_count(plain_db, legacy.table)
    create_legacy_index(plain_db, check_legacy_index(plain_db, legacy))
    after = check_legacy_index(plain_db, legacy)
    assert after.indexed
    assert after.usable == (f"ix_{legacy.table}_eximauthd_login",)
    assert legacy_index_warning(plain_db, legacy) is None
    assert index_count(plain_db, legacy.table) == before + 1
    create_legacy_index(plain_db, after)
    assert index_count(plain_db, legacy.table) == before + 1
    assert check_legacy_index(plain_db, legacy).indexed


@pytest.mark.parametrize(("key", "serves"), [
    (("username", "domain"), True),
    (("domain", "username"), True),
    (("username",), True),
    (("username", "password"), True),
    (("domain",), False),  # one domain can be the whole table
    (("domain", "password", "username"), False),
    (("password",), False),
])
def test_an_index_serves_when_its_leading_columns_hold_the_local_part(
        mariadb_url: str, key: tuple[str, ...], serves: bool) -> None:
    """MariaDB compares the bare columns: (username...), (domain, username) serve; (domain)
    alone does not."""
    db = Database(DatabaseConfig(url=mariadb_url))
    table = make_legacy_table(db, SEED_LEGACY)
    sa.Index("ix_given", *(table.c[name] for name in key)).create(db.primary)
    check = check_legacy_index(db, SEED_LEGACY)
    assert check.indexed is serves
    assert check.usable == (("ix_given",) if serves else ())
    db.dispose()


def test_a_primary_key_on_the_address_column_serves_on_mariadb(mariadb_url: str) -> None:
    """``mailbox(email PRIMARY KEY, ...)``: MariaDB's lookup uses the primary key."""
    db = Database(DatabaseConfig(url=mariadb_url))
    sa.Table("mailbox", sa.MetaData(), sa.Column("email", sa.String(320), primary_key=True),
             sa.Column("pw", sa.String(255))).create(db.primary)
    assert check_legacy_index(db, ADDRESS_LEGACY).usable == ("PRIMARY",)
    db.dispose()


def test_a_plain_column_index_does_not_serve_the_sqlite_lookup(sqlite_url: str) -> None:
    """SQLite's lookup compares lower(username): an index on the bare columns is not used."""
    db = Database(DatabaseConfig(url=sqlite_url))
    table = make_legacy_table(db, SEED_LEGACY)
    sa.Index("ix_plain", table.c.username, table.c.domain).create(db.primary)
    check = check_legacy_index(db, SEED_LEGACY)
    assert not check.indexed
    assert 'lower("username"), lower("domain")' in check.statement
    db.dispose()


def _plan(db: Database, legacy: LegacyConfig, login: str) -> list[dict[str, object]]:
    statement = LegacyAccountStore(db, legacy).lookup_statement(parse_address(login))
    with db.primary.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(Explain(statement))]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_mariadb_lookup_scans_the_table_until_the_index_exists(mariadb_url: str,
                                                               layout: str) -> None:
    """EXPLAIN of the statement find() sends: a full scan (type ALL, no key) without the
    index; a ref lookup on the created index with it."""
    legacy = LAYOUTS[layout]
    db = Database(DatabaseConfig(url=mariadb_url))
    table = make_legacy_table(db, legacy)
    fill(db, table, legacy, 3000)
    [before] = _plan(db, legacy, "user1234@d4.test")
    assert before["type"] == "ALL"
    assert before["possible_keys"] is None
    create_legacy_index(db, check_legacy_index(db, legacy))
    [after] = _plan(db, legacy, "user1234@d4.test")
    assert after["type"] == "ref"
    assert after["key"] == f"ix_{legacy.table}_eximauthd_login"
    assert LegacyAccountStore(db, legacy).find(parse_address("User1234@D4.test"))[0].address \
        == "user1234@d4.test"
    db.dispose()


def test_missing_table_and_missing_column_are_named(sqlite_url: str) -> None:
    """A wrong [legacy] table or column is an operator error naming it, not a traceback."""
    db = Database(DatabaseConfig(url=sqlite_url))
    with pytest.raises(SchemaMissingError, match="legacy table users missing"):
        check_legacy_index(db, SEED_LEGACY)
    make_legacy_table(db, SEED_LEGACY)
    with pytest.raises(ConfigError, match="has no column login"):
        check_legacy_index(db, replace(SEED_LEGACY, local_part_column="login"))
    db.dispose()


def test_no_legacy_table_configured_means_no_warning(sqlite_url: str) -> None:
    """eximauthd's own schema is indexed by its migrations: nothing to say."""
    db = Database(DatabaseConfig(url=sqlite_url))
    assert legacy_index_warning(db, LegacyConfig()) is None
    db.dispose()


def test_a_long_table_name_gets_an_index_name_within_the_limit(sqlite_url: str) -> None:
    """A 64-character table name still gives a valid (<= 64) index name that serves."""
    legacy = replace(SEED_LEGACY, table="t" * 64)
    db = Database(DatabaseConfig(url=sqlite_url))
    make_legacy_table(db, legacy)
    create_legacy_index(db, check_legacy_index(db, legacy))
    [name] = check_legacy_index(db, legacy).usable
    assert len(name) <= 64
    assert name.startswith("ix_eximauthd_login_")
    db.dispose()


def test_a_text_address_column_is_indexed_by_a_prefix_on_mariadb(mariadb_url: str) -> None:
    """MariaDB indexes TEXT only by a prefix: the statement names one, and the index made
    from it serves the lookup."""
    db = Database(DatabaseConfig(url=mariadb_url))
    sa.Table("accounts", sa.MetaData(),
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("email", sa.Text, nullable=False),
             sa.Column("pw", sa.String(255)), sa.Column("active", sa.String(1))
             ).create(db.primary)
    check = check_legacy_index(db, ADDRESS_ONLY)
    assert "`email`(191)" in check.statement
    create_legacy_index(db, check)
    assert check_legacy_index(db, ADDRESS_ONLY).usable == ("ix_accounts_eximauthd_login",)
    db.dispose()
