"""What the tests share: test data, database set-up, and small helpers to talk to a service.

Fixtures stay in conftest.py; everything a test module imports lives here (never from
conftest.py or from another test module).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from eximauthd.core.addresses import parse_address
from eximauthd.core.clients import read_client
from eximauthd.core.credentials import Credentials, read_credentials
from eximauthd.core.decision import Decision
from eximauthd.core.hashing import Hasher
from eximauthd.core.policy import read_relay
from eximauthd.core.protocol import AuthRequest, RelayRequest
from eximauthd.db.accounts import OwnAccountStore
from eximauthd.db.engine import Database
from eximauthd.db.grants import Grant, GrantStore
from eximauthd.service.decider import Decider
from eximauthd.settings import Config, DatabaseConfig, HashingConfig, LegacyConfig, ThrottleConfig

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

ALICE = "alice@example.test"
BOB = "bob@example.test"
# Rate counters are synchronised this often in these tests (the default is 1 s).
SYNC_MS = 100

def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def mariadb_reachable() -> bool:
    try:
        with socket.create_connection((MARIADB_HOST, MARIADB_PORT), timeout=2):
            return True
    except OSError:
        return False


def require_mariadb() -> None:
    if mariadb_reachable():
        return
    message = f"MariaDB is not reachable at {MARIADB_HOST}:{MARIADB_PORT}"
    if in_ci():
        pytest.fail(message + " (CI=true: a missing service fails the run)")
    pytest.skip(message)

def create_mariadb_database(admin: sa.Engine) -> str:
    # DDL cannot take a bound parameter for a database name; the name is generated here, never
    # input, and still goes through the dialect's identifier quoting.
    name = f"eximauthd_test_{os.getpid()}_{secrets.token_hex(4)}"
    quoted = admin.dialect.identifier_preparer.quote(name)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4"))
    return name


def drop_mariadb_database(admin: sa.Engine, name: str) -> None:
    quoted = admin.dialect.identifier_preparer.quote(name)
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}"))

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

PASSWORD = "s3cret pass ✓"


def populate(db_url: str) -> None:
    """alice and bob in example.test, carol disabled, alice may send as @partner.test."""
    from eximauthd.db import upgrade  # noqa: PLC0415

    db = Database(DatabaseConfig(url=db_url))
    upgrade.upgrade(db)
    hasher = Hasher(FAST_HASHING)
    store = OwnAccountStore(db)
    for name in ("alice", "bob", "carol"):
        store.add(parse_address(f"{name}@example.test"), hasher.hash(PASSWORD))
    store.set_enabled(parse_address("carol@example.test"), False)
    GrantStore(db).add(Grant("alice@example.test", "@partner.test"))
    db.dispose()

class Clock:
    """A settable clock for the pure parts (never for the services: they run in real time)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engines(db: Database) -> set[sa.Engine]:
    """Every engine a request may use: the transactional one and its autocommit twins."""
    return {db.primary, db.replica, db.auto_primary, db.auto_replica}


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False

def rate_env(**limits: str) -> dict[str, str]:
    return {"EXIMAUTHD_RATELIMIT_SYNC_INTERVAL_MS": str(SYNC_MS)} | {
        f"EXIMAUTHD_RATELIMIT_{k.upper()}": v for k, v in limits.items()}


def credentials(username: str, password: str, client_ip: str = "",
                throttle: ThrottleConfig | None = None) -> Credentials:
    """The credentials the service reads from an AUTH of *username*, *password*, *client_ip*
    (networks counted as *throttle* says); fails the test if they would be refused unread."""
    t = throttle or ThrottleConfig()
    read = read_credentials(username, password, read_client(client_ip, t.ipv4_prefix,
                                                            t.ipv6_prefix))
    assert isinstance(read, Credentials), read
    return read


def decide_auth(decider: Decider, request: AuthRequest) -> Decision:
    """The AUTH decision as the service makes it, but never from its cache: read once at the
    edge, then the throttle and the check."""
    read = decider.defenses.credentials(request)
    return read if isinstance(read, Decision) else decider.auth(read)


def decide_relay(decider: Decider, request: RelayRequest) -> Decision:
    """The RELAY decision as the service makes it (without the rate limit): read once at the
    edge, the pure policy, then the grants if it needs them."""
    relay = read_relay(request.authenticated_id, request.sender, request.recipient,
                       request.transaction)
    if isinstance(relay, Decision):
        return relay
    settled = decider.relay_without_storage(relay)
    return settled if settled is not None else decider.relay_with_grants(relay)


@dataclass
class Run:
    """What a CLI run gave: its exit code, stdout and stderr."""

    code: int
    out: str
    err: str


Cli = Callable[..., Run]  # runs the installed CLI with the given arguments


@dataclass(frozen=True)
class InstalledWheel:
    """eximauthd built as a wheel and installed (`pip install`, not editable) into a venv."""

    wheel: Path
    venv: Path

    @property
    def eximauthd(self) -> Path:
        return self.venv / "bin" / "eximauthd"
