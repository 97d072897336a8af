"""``eximauthd db upgrade``: bring eximauthd's own tables to the current revision (Alembic)."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from ..errors import StorageError
from .engine import Database, translate_errors

__all__ = ["current_revision", "head_revision", "newer_than_known", "upgrade"]

VERSION_TABLE = "eximauthd_alembic_version"


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    # The environment ships inside the package, so this works from a wheel as well as a checkout.
    cfg.set_main_option("script_location", str(resources.files("eximauthd.db.migrations")))
    return cfg


def head_revision() -> str:
    """The newest revision this version of eximauthd knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise StorageError("no schema revisions found in the installed package")
    return head


def newer_than_known(revision: str | None) -> str | None:
    """The error for a database at a revision this eximauthd does not know, else None.

    Another host's newer eximauthd upgraded the shared schema: only a newer eximauthd here can
    use it (and Alembic would otherwise fail with a traceback).
    """
    if revision is None:
        return None
    scripts = ScriptDirectory.from_config(_alembic_config())
    if revision in {script.revision for script in scripts.walk_revisions()}:
        return None
    return (f"the database schema is at revision {revision[:40]!r}, newer than this eximauthd "
            f"knows (its newest is {scripts.get_current_head()}): upgrade eximauthd here too")


def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None when eximauthd's tables were never created."""
    with translate_errors("read schema revision", db.where), db.primary.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade the primary database to *revision*; return (before, after)."""
    before = current_revision(db)
    newer = newer_than_known(before)
    if newer is not None:
        raise StorageError(newer)
    cfg = _alembic_config()
    with translate_errors("upgrade schema", db.where), db.primary.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return before, current_revision(db) or ""
