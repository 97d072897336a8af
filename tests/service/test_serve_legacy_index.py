"""``eximauthd serve`` on an unindexed ``[legacy]`` table: one warning at start-up, with the
statement that fixes it, and none when the index exists (real service, real MariaDB)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from eximauthd.db import upgrade
from eximauthd.db.engine import Database
from eximauthd.db.legacyindex import check_legacy_index, create_legacy_index
from eximauthd.settings import DatabaseConfig

from .. import servicekit as kit
from ..support import SEED_LEGACY, create_seed_table

LEGACY_ENV = {
    "EXIMAUTHD_LEGACY_TABLE": "users",
    "EXIMAUTHD_LEGACY_LOCAL_PART_COLUMN": "username",
    "EXIMAUTHD_LEGACY_DOMAIN_COLUMN": "domain",
    "EXIMAUTHD_LEGACY_PASSWORD_COLUMN": "password",
    "EXIMAUTHD_LEGACY_ENABLED_COLUMN": "smtp",
    "EXIMAUTHD_HTTP_ENABLED": "false",
}


@pytest.mark.parametrize("indexed", [False, True], ids=["unindexed", "indexed"])
def test_serve_warns_once_at_start_up_only_for_an_unindexed_table(mariadb_url: str,
                                                                  indexed: bool) -> None:
    """Unindexed: exactly one warning line naming the CREATE INDEX, however many AUTHs
    follow; indexed: none.  The AUTHs are answered either way."""
    db = Database(DatabaseConfig(url=mariadb_url))
    upgrade.upgrade(db)
    table = create_seed_table(db)
    with db.primary.begin() as conn:
        conn.execute(sa.insert(table).values(username="alice", domain="example.test",
                                             password="plain-pw", smtp=1))
    statement = check_legacy_index(db, SEED_LEGACY).statement
    if indexed:
        create_legacy_index(db, check_legacy_index(db, SEED_LEGACY))
    db.dispose()
    with kit.running(mariadb_url, extra_env=LEGACY_ENV) as served:
        answers = [served.ask(kit.auth_line("alice@example.test", password))
                   for password in ("plain-pw", "wrong", "plain-pw")]
        assert answers[0] == b"yes\n"
        assert answers[1].startswith(b"no")
        log = served.log()
    warnings = [line for line in log.splitlines() if "no index serves the login lookup" in line]
    if indexed:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert statement in warnings[0]
