"""The schema revision: :data:`~eximauthd.db.upgrade.HEAD` and the revision a database is at,
read without Alembic, agree with what Alembic itself reads."""

from __future__ import annotations

from importlib import resources

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from eximauthd.db import upgrade
from eximauthd.db.engine import Database
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
