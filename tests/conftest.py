"""Fixtures that give tests real databases: a SQLite file, or a fresh MariaDB database.

Each MariaDB test database is created for the test and dropped afterwards.  Without a MariaDB
server the MariaDB cases are skipped locally but *fail* under CI=true, so a broken CI machine
cannot pass by testing nothing.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

from eximauthd.core.hashing import Hasher
from eximauthd.db import upgrade
from eximauthd.db.engine import Database
from eximauthd.settings import Config, DatabaseConfig, HashingConfig, LegacyConfig

# scripts/mutation runs pytest with --hypothesis-profile=mutation: the same examples on every
# run (a mutant is killed or not, never by luck), and no timing checks, which every test fails
# now and then under mutmut's instrumentation on a busy machine, nor the check that a
# test runs on one class instance (mutmut runs the same tests several times in one process).
settings.register_profile("mutation", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.differing_executors])

MARIADB_HOST = os.environ.get("ETEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("ETEST_MARIADB_PORT", "3306"))
MARIADB_ADMIN_URL = f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/"

# argon2-cffi's cheapest parameters: the suite tests logic, not cost.
FAST_HASHING = HashingConfig(memory_cost=8, time_cost=1, parallelism=1, hash_len=16, salt_len=16)
FAST_HASHING_ENV = {
    "EXIMAUTHD_HASHING_MEMORY_COST": "8",
    "EXIMAUTHD_HASHING_TIME_COST": "1",
    "EXIMAUTHD_HASHING_HASH_LEN": "16",
}

SEED_LEGACY = LegacyConfig(
    table="users", local_part_column="username", domain_column="domain",
    password_column="password", enabled_column="smtp", enabled_when="> 0",
)
ADDRESS_LEGACY = LegacyConfig(
    table="mailbox", address_column="email", password_column="pw",
    enabled_column="active", enabled_when="= 'y'", enabled_value="y", disabled_value="n",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _mariadb_reachable() -> bool:
    try:
        with socket.create_connection((MARIADB_HOST, MARIADB_PORT), timeout=2):
            return True
    except OSError:
        return False


def require_mariadb() -> None:
    if _mariadb_reachable():
        return
    message = f"MariaDB is not reachable at {MARIADB_HOST}:{MARIADB_PORT}"
    if in_ci():
        pytest.fail(message + " (CI=true: a missing service fails the run)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def mariadb_admin() -> Iterator[sa.Engine]:
    require_mariadb()
    engine = sa.create_engine(MARIADB_ADMIN_URL, hide_parameters=True)
    yield engine
    engine.dispose()


def _create_mariadb_database(admin: sa.Engine) -> str:
    # DDL cannot take a bound parameter for a database name; the name is generated here, never
    # input, and still goes through the dialect's identifier quoting.
    name = f"eximauthd_test_{os.getpid()}_{secrets.token_hex(4)}"
    quoted = admin.dialect.identifier_preparer.quote(name)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4"))
    return name


def _drop_mariadb_database(admin: sa.Engine, name: str) -> None:
    quoted = admin.dialect.identifier_preparer.quote(name)
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}"))


@pytest.fixture
def mariadb_url(mariadb_admin: sa.Engine) -> Iterator[str]:
    """The URL of a new, empty MariaDB database, dropped after the test."""
    name = _create_mariadb_database(mariadb_admin)
    yield f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    _drop_mariadb_database(mariadb_admin, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'eximauthd.sqlite3'}"


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database URL on each backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "mariadb_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """A Database at the current schema revision."""
    db = Database(DatabaseConfig(url=db_url))
    upgrade.upgrade(db)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def hasher() -> Hasher:
    return Hasher(FAST_HASHING)


def create_seed_table(db: Database) -> sa.Table:
    """The seed's ``users(username, domain, password, smtp)``, plaintext passwords and all."""
    table = sa.Table(
        "users", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("password", sa.String(255), nullable=True),
        sa.Column("smtp", sa.Integer, nullable=False, server_default="1"),
    )
    table.create(db.primary)
    return table


def create_address_table(db: Database) -> sa.Table:
    """A single-address-column shape: ``mailbox(email, pw, active)``."""
    table = sa.Table(
        "mailbox", sa.MetaData(),
        sa.Column("email", sa.String(320), primary_key=True),
        sa.Column("pw", sa.String(255), nullable=True),
        sa.Column("active", sa.String(1), nullable=False, server_default="y"),
    )
    table.create(db.primary)
    return table


def config_for(url: str, legacy: LegacyConfig | None = None) -> Config:
    config = Config(database=DatabaseConfig(url=url), hashing=FAST_HASHING)
    return replace(config, legacy=legacy) if legacy else config
