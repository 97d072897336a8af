"""The schema revision: :data:`~eximauthd.db.upgrade.HEAD` and the revision a database is at,
read without Alembic, agree with what Alembic itself reads."""

from __future__ import annotations

from importlib import resources

import pytest
import sqlalchemy as sa
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from eximauthd.db import upgrade
from eximauthd.db.engine import Database
from eximauthd.errors import StorageError
from eximauthd.settings import DatabaseConfig


def _alembic_current(db: Database) -> str | None:
    with db.primary.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": upgrade.VERSION_TABLE}).get_current_revision()


def test_head_is_the_newest_migration_script() -> None:
    """A new migration needs HEAD moved to it, or `serve` would refuse every database."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("eximauthd.db.migrations")))
    scripts = ScriptDirectory.from_config(cfg)
    assert scripts.get_heads() == [upgrade.HEAD]
    assert upgrade.head_revision() == upgrade.HEAD


def test_current_revision_reads_what_alembic_reads(db_url: str) -> None:
    db = Database(DatabaseConfig(url=db_url))
    try:
        assert upgrade.current_revision(db) is None
        assert _alembic_current(db) is None
        assert upgrade.upgrade(db, "0003") == (None, "0003")
        assert upgrade.current_revision(db) == _alembic_current(db) == "0003"
        assert upgrade.upgrade(db) == ("0003", upgrade.HEAD)
        assert upgrade.current_revision(db) == _alembic_current(db) == upgrade.HEAD
        # At HEAD already: nothing to do, and nothing done.
        assert upgrade.upgrade(db) == (upgrade.HEAD, upgrade.HEAD)
        assert upgrade.newer_than_known(upgrade.HEAD) is None
        assert upgrade.newer_than_known("0002") is None
        assert "newer than this eximauthd knows" in (upgrade.newer_than_known("9999") or "")
    finally:
        db.dispose()


def _record(db: Database, *revisions: str) -> None:
    with db.primary.begin() as conn:
        conn.execute(sa.delete(sa.table(upgrade.VERSION_TABLE)))
        for revision in revisions:
            conn.execute(sa.insert(sa.table(upgrade.VERSION_TABLE, sa.column("version_num")))
                         .values(version_num=revision))


def test_a_database_at_an_unknown_revision_is_never_current(database: Database) -> None:
    """A revision this eximauthd does not know (another host's newer one, or anything
    written there by hand) is refused by `serve`'s check, in one line, never taken for HEAD."""
    for revision in ("9999", f"{upgrade.HEAD} ", upgrade.HEAD.upper() + "x"):
        _record(database, revision)
        assert upgrade.current_revision(database) == revision
        assert "newer than this eximauthd knows" in (upgrade.newer_than_known(revision) or "")
        with pytest.raises(StorageError, match="newer than this eximauthd knows"):
            upgrade.upgrade(database)


@pytest.mark.parametrize("revisions", [(upgrade.HEAD, "0003"), (upgrade.HEAD, "9999"),
                                       ("0002", "0003")])
def test_several_recorded_revisions_are_one_clear_error(database: Database,
                                                        revisions: tuple[str, ...]) -> None:
    """A version table with several rows (hand-edited, or not eximauthd's) is neither HEAD nor
    a traceback: serve, doctor and `db upgrade` all stop on one StorageError naming them."""
    _record(database, *revisions)
    shown = ", ".join(repr(r) for r in sorted(revisions))
    with pytest.raises(StorageError, match=f"records 2 schema revisions \\({shown}\\)"):
        upgrade.current_revision(database)
    with pytest.raises(StorageError, match="records 2 schema revisions"):
        upgrade.upgrade(database)
