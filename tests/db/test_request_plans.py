"""Every statement the service sends to answer one AUTH or RELAY can use an index (MariaDB).

The statements are recorded from a real Decider on a real MariaDB database (a recording
listener on the engine, nothing replaced), then each read, update and delete is EXPLAINed with
its own parameters.  A table the plan reads with no possible key would be read whole on
every request: at a million rows, every AUTH and every guess of a password spray.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from eximauthd.core.addresses import parse_address
from eximauthd.core.hashing import Hasher
from eximauthd.core.protocol import AuthRequest, RelayRequest
from eximauthd.db import upgrade
from eximauthd.db.accounts import OwnAccountStore
from eximauthd.db.engine import Database
from eximauthd.db.grants import Grant, GrantStore
from eximauthd.db.legacyindex import check_legacy_index, create_legacy_index
from eximauthd.service.decider import Decider
from eximauthd.settings import DatabaseConfig

from ..support import (
    FAST_HASHING,
    PASSWORD,
    SEED_LEGACY,
    config_for,
    create_seed_table,
    decide_auth,
    decide_relay,
    engines,
)

IP = "192.0.2.10"
USERS = 200


# The SQL text as sent to the driver, and its parameters (Core statements and the ones
# eximauthd.db.prepared compiled once alike).
Recorded = list[tuple[str, Any]]


def _setup_own(db: Database, hashed: str) -> None:
    store = OwnAccountStore(db)
    for i in range(USERS):
        store.add(parse_address(f"user{i}@example.test"), hashed)


def _setup_legacy(db: Database, hashed: str) -> None:
    table = create_seed_table(db)
    with db.primary.begin() as conn:
        conn.execute(sa.insert(table), [
            {"username": f"user{i}", "domain": "example.test", "password": hashed, "smtp": 1}
            for i in range(USERS)])
    create_legacy_index(db, check_legacy_index(db, SEED_LEGACY))


@pytest.fixture(params=["own", "legacy-indexed"])
def decider(request: pytest.FixtureRequest, mariadb_url: str) -> Iterator[Decider]:
    """A Decider on MariaDB with USERS accounts, a send-as grant, and (legacy) the index
    ``db index-legacy`` creates."""
    db = Database(DatabaseConfig(url=mariadb_url))
    upgrade.upgrade(db)
    legacy = request.param == "legacy-indexed"
    config = config_for(mariadb_url, SEED_LEGACY if legacy else None)
    hashed = Hasher(FAST_HASHING).hash(PASSWORD)
    (_setup_legacy if legacy else _setup_own)(db, hashed)
    GrantStore(db).add(Grant("user1@example.test", "@partner.test"))
    made = Decider(config, db=db)
    yield made
    made.close()


def _record(db: Database) -> tuple[Recorded, Any]:
    recorded: Recorded = []

    def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
               executemany: bool) -> None:
        if not executemany and statement.split(None, 1)[0].upper() in {
                "SELECT", "UPDATE", "DELETE"}:
            recorded.append((statement, parameters))

    for engine in engines(db):
        sa.event.listen(engine, "before_cursor_execute", listen)
    return recorded, listen


def _requests(decider: Decider) -> None:
    """What clients do: a right password, a wrong one, an unknown user, a spray that locks a
    user out (then the owner's known network is read), a relay that needs the grants."""
    for user, password in [("user1@example.test", PASSWORD), ("user2@example.test", "wrong"),
                           ("nobody@example.test", PASSWORD)]:
        decide_auth(decider, AuthRequest("PLAIN", user, password, IP))
    # The success's reservation, taken back with its batch (that DELETE is EXPLAINed too).
    assert decider.defenses.throttle is not None
    decider.defenses.throttle.flush()
    for guess in range(decider.config.throttle.max_failures_per_user + 1):
        decide_auth(decider, AuthRequest("PLAIN", "user1@example.test", f"guess{guess}",
                                         "198.51.100.7"))
    decide_auth(decider, AuthRequest("PLAIN", "user1@example.test", PASSWORD, IP))
    decide_relay(decider, RelayRequest("user1@example.test", "x@partner.test",
                                       "someone@remote.test", IP))


def test_every_statement_of_a_request_can_use_an_index(decider: Decider) -> None:
    """EXPLAIN of each recorded SELECT/UPDATE/DELETE: every table it reads has a possible
    key (or is a const lookup the optimizer already settled)."""
    db = decider.db
    recorded, listen = _record(db)
    _requests(decider)
    for engine in engines(db):
        sa.event.remove(engine, "before_cursor_execute", listen)
    tables_seen = set()
    assert len(recorded) >= 4, recorded
    with db.primary.connect() as conn:
        for clause, params in recorded:
            for row in conn.exec_driver_sql("EXPLAIN " + clause, params).mappings():
                if row["table"] is None:
                    continue  # "Impossible WHERE noticed after reading const tables": indexed
                if str(row["table"]).startswith("<derived"):
                    # The AUTH path's one read joins two derived tables: a row of counts and
                    # the account lookup (LIMIT-bounded); their own rows are EXPLAINed too.
                    continue
                tables_seen.add(row["table"])
                assert row["possible_keys"] is not None or row["type"] in {"const", "system"}, \
                    (clause, dict(row))
    account_table = "users" if decider.config.legacy.configured else "eximauthd_users"
    assert {account_table, "eximauthd_grants", "eximauthd_auth_attempts",
            "eximauthd_known_clients"} <= tables_seen
