"""Run migrations on the connection that ``eximauthd db upgrade`` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from eximauthd.db.tables import metadata

VERSION_TABLE = "eximauthd_alembic_version"


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # Only our own tables: a shared database also holds the mail system's tables.
        include_name=lambda name, type_, _parent: type_ != "table"
        or bool(name and name.startswith("eximauthd_")),
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `eximauthd db upgrade`, which supplies the connection")
run_migrations(connection)
