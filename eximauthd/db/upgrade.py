"""``eximauthd db upgrade``: bring eximauthd's own tables to the current revision (Alembic)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ..errors import SchemaRevisionError, StorageError
from .engine import Database, translate_errors

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

__all__ = ["HEAD", "current_revision", "head_revision", "newer_than_known", "upgrade"]

VERSION_TABLE = "eximauthd_alembic_version"

# The newest revision in migrations/versions (tests/db/test_upgrade.py holds it to Alembic's
# own view of the scripts).  `serve` checks the schema at every start, and Alembic (with Mako,
# Pygments and every SQLAlchemy dialect it imports) would stay in the service's memory for
# good, about 9 MiB: so the common case, a database already at HEAD, is decided with
# SQLAlchemy Core alone, and Alembic is imported only to migrate or to explain a mismatch.
HEAD = "0004"

_VERSIONS = sa.table(VERSION_TABLE, sa.column("version_num"))


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig  # noqa: PLC0415 -- see HEAD

    cfg = AlembicConfig()
    # The environment ships inside the package, so this works from a wheel as well as a checkout.
    cfg.set_main_option("script_location", str(resources.files("eximauthd.db.migrations")))
    return cfg


def head_revision() -> str:
    """The newest revision this version of eximauthd knows (:data:`HEAD`)."""
    return HEAD


def newer_than_known(revision: str | None) -> str | None:
    """The error for a database at a revision this eximauthd does not know, else None.

    Another host's newer eximauthd upgraded the shared schema: only a newer eximauthd here can
    use it (and Alembic would otherwise fail with a traceback).
    """
    if revision is None or revision == HEAD:
        return None
    from alembic.script import ScriptDirectory  # noqa: PLC0415 -- see HEAD

    scripts = ScriptDirectory.from_config(_alembic_config())
    if revision in {script.revision for script in scripts.walk_revisions()}:
        return None
    return (f"the database schema is at revision {revision[:40]!r}, newer than this eximauthd "
            f"knows (its newest is {scripts.get_current_head()}): upgrade eximauthd here too")


def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None when eximauthd's tables were never created."""
    with translate_errors("read schema revision", db.where), db.primary.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.execute(sa.select(_VERSIONS.c.version_num)).scalars().all()
    if len(rows) > 1:
        # eximauthd's migrations never branch: several rows are a hand-edited or foreign table.
        # Never taken for HEAD, and said in one line (Alembic would raise a CommandError, a
        # traceback for the operator).  repr(): values read from the database, shown inert.
        shown = ", ".join(repr(str(r)) for r in sorted(rows, key=str)[:5])
        raise SchemaRevisionError(
            f"{VERSION_TABLE} records {len(rows)} schema revisions ({shown}), eximauthd keeps "
            "exactly one: leave only the revision the schema is really at, then run "
            "`eximauthd db upgrade`")
    return None if not rows or rows[0] is None else str(rows[0])


def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade the primary database to *revision*; return (before, after)."""
    before = current_revision(db)
    if before == HEAD and revision in ("head", HEAD):
        return before, before  # what Alembic would do, without importing it (see HEAD)
    newer = newer_than_known(before)
    if newer is not None:
        raise StorageError(newer)
    from alembic import command  # noqa: PLC0415 -- see HEAD

    cfg = _alembic_config()
    with translate_errors("upgrade schema", db.where), db.primary.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return before, current_revision(db) or ""
