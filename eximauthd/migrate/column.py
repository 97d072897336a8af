"""The table and column that hold the passwords ``migrate-passwords`` rewrites, and their width.

Reflected, not assumed: a legacy table (the seed's ``users``) is described from the database, and
its password column's declared width is compared with one real new hash before anything is
written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from ..core.hashing import Hasher
from ..db import tables
from ..db.accounts import legacy_address_columns
from ..db.engine import Database, translate_errors
from ..errors import ConfigError, SchemaMissingError
from ..settings import Config

__all__ = ["ColumnCheck", "Target", "address_of", "check_column", "inspect_target", "widen"]

_log = logging.getLogger("eximauthd.migrate")

# The width suggested for a password column: eximauthd's own, room for any parameters allowed.
_SUGGESTED_WIDTH = tables.HASH_LENGTH


@dataclass(frozen=True, slots=True)
class ColumnCheck:
    """Whether the password column can hold the new hashes, and the statement that widens it."""

    table: str
    column: str
    dialect: str
    needed: int
    declared: str = ""  # the column type as the database has it
    length: int | None = None  # None: no limit (TEXT), or not enforced (SQLite)
    alter: str = ""  # ALTER TABLE ... MODIFY ..., only when the column is too narrow

    @property
    def fits(self) -> bool:
        return self.length is None or self.length >= self.needed

    def describe(self) -> str:
        where = f"column {self.table}.{self.column}"
        if self.dialect == "sqlite":
            return f"{where}: SQLite does not enforce column lengths, no width check needed"
        verdict = "holds" if self.fits else "is too narrow for"
        return f"{where}: {self.declared} {verdict} the {self.needed}-character argon2id hashes"



@dataclass(frozen=True, slots=True)
class Target:
    """The table, its row key, its address columns and its password column (reflected)."""

    table: sa.Table
    # What pages are ordered by and swaps find a row by: the primary key when the table has
    # one (one index lookup), else the address columns (give them an index on a big table).
    key: tuple[sa.Column[Any], ...]
    address: tuple[sa.Column[Any], ...]
    password: sa.Column[Any]
    stamp: sa.Column[Any] | None = None  # set to now() with each new hash (own schema)


def address_of(parts: Sequence[Any]) -> str:
    return "@".join(str(part) for part in parts)


def _reflect(db: Database, table: str) -> tuple[dict[str, Any], list[str]]:
    """The table's columns by lower-case name, and its primary key's column names."""
    with translate_errors("inspect the password table", db.where), db.primary.connect() as conn:
        inspector = sa.inspect(conn)
        try:
            columns = {c["name"].lower(): c for c in inspector.get_columns(table)}
        except sa.exc.NoSuchTableError:
            raise SchemaMissingError(f"table {table} missing: run `eximauthd db upgrade` "
                                     "(or check the [legacy] table name)") from None
        return columns, list(inspector.get_pk_constraint(table)["constrained_columns"])


def _target(config: Config, columns: dict[str, Any], primary_key: list[str]) -> Target:
    legacy = config.legacy
    if not legacy.configured:
        t = tables.users
        return Target(t, (t.c.id,), (t.c.address,), t.c.password_hash, t.c.updated_at)
    names = list(legacy_address_columns(legacy))
    for name in [*names, legacy.password_column]:
        if name.lower() not in columns:
            raise ConfigError(f"table {legacy.table} has no column {name} (check [legacy])")
    key = primary_key or names
    # A detached description, as in LegacyAccountStore: nothing is created from it.
    table = sa.Table(legacy.table, sa.MetaData(), *(
        sa.Column(n, columns[n.lower()]["type"])
        for n in dict.fromkeys([*key, *names, legacy.password_column])))
    return Target(table, tuple(table.c[n] for n in key), tuple(table.c[n] for n in names),
                   table.c[legacy.password_column])


def inspect_target(db: Database, config: Config) -> tuple[Target, ColumnCheck]:
    name = config.legacy.table if config.legacy.configured else tables.users.name
    columns, primary_key = _reflect(db, name)
    target = _target(config, columns, primary_key)
    table, column = target.table.name, target.password.name
    needed = len(Hasher(config.hashing).hash("width probe"))
    if db.dialect == "sqlite":
        return target, ColumnCheck(table, column, db.dialect, needed)
    info = columns[column.lower()]
    declared = info["type"].compile(dialect=db.primary.dialect)
    length = getattr(info["type"], "length", None)
    check = ColumnCheck(table, column, db.dialect, needed, declared,
                        length if isinstance(length, int) else None)
    if check.fits:
        return target, check
    wider = info["type"].adapt(type(info["type"]), length=max(_SUGGESTED_WIDTH, needed))
    return target, ColumnCheck(table, column, db.dialect, needed, declared, check.length,
                               _modify_statement(db.primary.dialect, table, info, wider))


def check_column(db: Database, config: Config) -> ColumnCheck:
    """Inspect the password column and compare its width with one new hash.

    :raises SchemaMissingError: the table does not exist.
    :raises ConfigError: a configured column does not exist.
    """
    return inspect_target(db, config)[1]


def _modify_statement(dialect: Dialect, table: str, info: Any, wider: Any) -> str:
    # MODIFY restates the whole column: keep its NULL-ness, default, charset and comment.
    quote = dialect.identifier_preparer.quote_identifier
    parts = [f"ALTER TABLE {quote(table)} MODIFY {quote(info['name'])}",
             wider.compile(dialect=dialect), "NULL" if info["nullable"] else "NOT NULL"]
    if info.get("default") is not None:
        parts.append(f"DEFAULT {info['default']}")
    if info.get("comment"):
        comment = str(info["comment"]).replace("\\", "\\\\").replace("'", "''")
        parts.append(f"COMMENT '{comment}'")
    return " ".join(parts)


def widen(db: Database, check: ColumnCheck) -> None:
    # DDL takes no bound parameters: the statement is built from reflected metadata and quoted
    # identifiers only.  PyMySQL %-formats even a statement without parameters, hence the %%.
    _log.warning("widening %s.%s: %s", check.table, check.column, check.alter)
    with db.write("widen the password column") as conn:
        conn.exec_driver_sql(check.alter.replace("%", "%%"))
