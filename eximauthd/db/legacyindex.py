"""Can the login lookup on a ``[legacy]`` table use an index, and the index that lets it.

The classic ``users(username, domain, password, smtp)`` table usually has no index on its
login columns: every AUTH, and every guess of a password spray, then reads the whole table
(measured in ``bench/RESULTS.md``).  :func:`check_legacy_index` says so, with the exact
``CREATE INDEX`` to run; :func:`create_legacy_index` runs it (online on MySQL/MariaDB).

What "usable" means follows the statement :class:`~eximauthd.db.accounts.LegacyAccountStore`
sends (``lookup``):

- MySQL/MariaDB compare the bare columns (the collation is caseless), so an index serves when
  its leading columns are address columns and include the local part (or the address column):
  ``(username, domain)``, ``(domain, username)`` or ``(username)``; not ``(domain)`` alone,
  which on a one-domain server is the whole table.  Read with SQLAlchemy's inspector.
- SQLite compares ``lower(column)``, which no plain column index serves: it needs an index on
  the expressions ``lower(username), lower(domain)``.  Read from SQLite's own plan of the real
  statement (``EXPLAIN QUERY PLAN``), since SQLAlchemy does not reflect expression indexes.

DDL is built from SQLAlchemy constructs on a detached table whose names were validated as plain
identifiers by the configuration, and quoted by the dialect's identifier preparer.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql.compiler import DDLCompiler, SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

from ..core.addresses import Address
from ..errors import ConfigError, SchemaMissingError, StorageError
from ..settings import LegacyConfig
from .accounts import LegacyAccountStore, legacy_address_columns
from .engine import MYSQL_DIALECTS, Database, create_engine, translate_errors

__all__ = [
    "Explain",
    "LegacyIndexCheck",
    "check_legacy_index",
    "create_legacy_index",
    "legacy_index_warning",
]

_log = logging.getLogger("eximauthd.db")

# The address looked up by the SQLite plan: any value gives the same plan.
_PROBE = Address("eximauthd-index-probe", "invalid")
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_IDENTIFIER = 64  # MySQL's limit for an index name
# The key prefix for a TEXT/BLOB address column (MySQL indexes those only by a prefix): 191
# characters of utf8mb4 stay within the smallest InnoDB key limit (767 bytes).
_TEXT_PREFIX = 191
_SEARCH_RE = re.compile(r"^SEARCH \S+ USING (?:COVERING )?INDEX (\S+)")


class Explain(Executable, ClauseElement):
    """``EXPLAIN`` (MySQL) or ``EXPLAIN QUERY PLAN`` (SQLite) of a SQLAlchemy statement, with
    the statement's own bound parameters: the statement is never turned into text by hand."""

    inherit_cache = False

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement


@compiles(Explain)
def _compile_explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    if compiler.dialect.name != "sqlite":
        return f"EXPLAIN {compiler.process(element.statement, **kw)}"
    # Python's sqlite3 caches prepared statements by their text, and a cached EXPLAIN keeps the
    # plan it was prepared with (an EXPLAIN never checks the schema cookie): a text of its own
    # is prepared afresh, on the schema as it is now.
    return (f"EXPLAIN QUERY PLAN {compiler.process(element.statement, **kw)} "
            f"/* {secrets.token_hex(8)} */")


class _OnlineCreateIndex(CreateIndex):
    """``CREATE INDEX`` that MySQL/MariaDB build without blocking reads or writes (or refuse)."""

    inherit_cache = False


@compiles(_OnlineCreateIndex)
def _compile_online(element: _OnlineCreateIndex, compiler: DDLCompiler, **kw: Any) -> str:
    text: str = compiler.visit_create_index(element, **kw)  # type: ignore[no-untyped-call]
    if compiler.dialect.name in MYSQL_DIALECTS:
        # Refused with an error, never silently run as a table copy under a lock.
        text += " ALGORITHM=INPLACE LOCK=NONE"
    return text


@dataclass(frozen=True, slots=True)
class LegacyIndexCheck:
    """Whether the legacy lookup can use an index; if not, the statement that makes one."""

    table: str
    columns: tuple[str, ...]  # the address columns the lookup compares, in its order
    dialect: str
    usable: tuple[str, ...]  # the indexes the lookup can use (PRIMARY for a primary key)
    statement: str = ""  # CREATE INDEX ..., only when no index is usable

    @property
    def indexed(self) -> bool:
        return bool(self.usable)

    def summary(self) -> str:
        """The index that serves the lookup, or that none does."""
        where = f"legacy table {self.table} ({', '.join(self.columns)})"
        if self.indexed:
            return f"{where}: the login lookup uses index {', '.join(self.usable)}"
        need = (" (SQLite: an index on lower() of the columns, as the lookup compares them)"
                if self.dialect == "sqlite" else "")
        return f"{where}: no index serves the login lookup, so every AUTH reads the whole " \
               f"table{need}"

    def describe(self) -> str:
        """One line: :meth:`summary`, and when no index serves, the two ways to make one."""
        if self.indexed:
            return self.summary()
        return (f"{self.summary()}; run `eximauthd db index-legacy --apply`, or: "
                f"{self.statement};")


def _index_name(table: str) -> str:
    name = f"ix_{table}_eximauthd_login"
    if len(name) <= _MAX_IDENTIFIER:
        return name
    # A long table name: still one stable name per table (SQLite's index names are global).
    return f"ix_eximauthd_login_{hashlib.sha256(table.encode()).hexdigest()[:16]}"


def _validated(name: str, what: str) -> str:
    # The configuration validates these already; DDL checks again rather than trust a caller.
    if not _IDENTIFIER_RE.fullmatch(name):
        raise ConfigError(f"{what}: {name[:40]!r} is not a plain SQL identifier")
    return name


def _reflect(db: Database, legacy: LegacyConfig
             ) -> tuple[dict[str, Any], list[tuple[str, list[str]]]]:
    """The table's columns by lower-case name, and its keys (primary key first, as PRIMARY)
    as (name, lower-case column names; an expression stands as ``""``); no keys on SQLite."""
    with translate_errors("inspect the legacy table"), db.primary.connect() as conn:
        inspector = sa.inspect(conn)
        try:
            columns = {c["name"].lower(): c for c in inspector.get_columns(legacy.table)}
        except sa.exc.NoSuchTableError:
            raise SchemaMissingError(f"legacy table {legacy.table} missing (check [legacy] "
                                     "table)") from None
        if db.dialect == "sqlite":
            return columns, []  # read from the plan instead (expression indexes)
        primary = inspector.get_pk_constraint(legacy.table)["constrained_columns"]
        keys = [("PRIMARY", [c.lower() for c in primary])] if primary else []
        keys += [(str(i["name"]), [(c or "").lower() for c in i["column_names"]])
                 for i in inspector.get_indexes(legacy.table)]
    return columns, keys


def _serves(key: list[str], address: list[str]) -> bool:
    """Do the leading columns of *key* narrow the lookup to one login (MySQL)?"""
    leading: list[str] = []
    for column in key:
        if column not in address or column in leading:
            break
        leading.append(column)
    return address[0] in leading  # the local part, or the single address column


def _sqlite_usable(db: Database, legacy: LegacyConfig) -> tuple[str, ...]:
    statement = LegacyAccountStore(db, legacy).lookup(_PROBE)
    with db.read("explain the legacy lookup") as conn:
        # A pooled connection plans on the schema it last read, and an EXPLAIN does not read
        # it again: a real read first, so that an index made on another connection is seen.
        conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").all()
        plan = [str(row[-1]) for row in conn.execute(Explain(statement))]
    return tuple(m.group(1) for line in plan if (m := _SEARCH_RE.match(line)))


def _statement(db: Database, legacy: LegacyConfig, columns: dict[str, Any]) -> str:
    # quoted_name(..., quote=True): always quoted by the dialect, reserved word or not.
    names = [sa.sql.quoted_name(_validated(columns[n.lower()]["name"], "legacy column"), True)
             for n in legacy_address_columns(legacy)]
    table = sa.Table(sa.sql.quoted_name(_validated(legacy.table, "legacy.table"), True),
                     sa.MetaData(), *(sa.Column(n, sa.String) for n in names))
    parts: list[Any] = [table.c[n] for n in names]
    options: dict[str, Any] = {}
    if db.dialect == "sqlite":
        parts = [sa.func.lower(column) for column in parts]
    elif db.is_mysql:
        unbounded = {c.name: _TEXT_PREFIX for c in parts
                     if getattr(columns[c.name.lower()]["type"], "length", None) is None}
        if unbounded:
            options["mysql_length"] = unbounded
    index = sa.Index(sa.sql.quoted_name(_index_name(legacy.table), True), *parts, **options)
    return str(_OnlineCreateIndex(index).compile(dialect=db.primary.dialect))


def check_legacy_index(db: Database, legacy: LegacyConfig) -> LegacyIndexCheck:
    """Inspect the ``[legacy]`` table: can the login lookup use an index?

    :raises SchemaMissingError: the table does not exist.
    :raises ConfigError: a configured address column does not exist.
    :raises StorageError: the database failed.
    """
    columns, keys = _reflect(db, legacy)
    address = [n.lower() for n in legacy_address_columns(legacy)]
    for name in address:
        if name not in columns:
            raise ConfigError(f"table {legacy.table} has no column {name} (check [legacy])")
    if db.dialect == "sqlite":
        usable = _sqlite_usable(db, legacy)
    else:
        usable = tuple(name for name, key in keys if _serves(key, address))
    shown = tuple(columns[n]["name"] for n in address)
    if usable:
        return LegacyIndexCheck(legacy.table, shown, db.dialect, usable)
    return LegacyIndexCheck(legacy.table, shown, db.dialect, (),
                            _statement(db, legacy, columns))


def create_legacy_index(db: Database, check: LegacyIndexCheck) -> None:
    """Run *check*'s ``CREATE INDEX`` (nothing when an index is already usable)."""
    if check.indexed:
        return
    _log.info("indexing the legacy login columns: %s", check.statement)
    engine = _ddl_engine(db)
    try:
        with translate_errors("create the legacy login index"), engine.begin() as conn:
            # DDL takes no bound parameters; PyMySQL %-formats even a statement without any.
            conn.exec_driver_sql(check.statement.replace("%", "%%"))
    except StorageError as exc:
        online = " ALGORITHM=INPLACE LOCK=NONE"
        hint = (f"if the server cannot build it online, run it without{online} at a quiet hour"
                if online in check.statement else "check the database user may create indexes")
        raise StorageError(f"{exc}; statement: {check.statement} ({hint})") from None
    finally:
        if engine is not db.primary:
            engine.dispose()


def _ddl_engine(db: Database) -> sa.Engine:
    """The primary, but on MySQL/MariaDB without the service's read timeout: building the
    index of a million rows takes longer than a lookup may, and a client that gives up
    mid-statement leaves the admin not knowing whether the index exists."""
    if not db.is_mysql:
        return db.primary
    # The service's engine factory, so that it logs in alike (password_file's password sent as
    # UTF-8: PyMySQL alone encodes it as Latin-1, a traceback for a "€").
    return create_engine(db.config.url, db.config.connect_timeout, db.config.password,
                         unbounded_io=True)


def legacy_index_warning(db: Database, legacy: LegacyConfig) -> str | None:
    """The one-line warning for ``serve``, ``doctor`` and ``migrate-passwords``: None when no
    ``[legacy]`` table is configured or its lookup is indexed.

    :raises EximauthdError: as :func:`check_legacy_index`.
    """
    if not legacy.configured:
        return None
    check = check_legacy_index(db, legacy)
    return None if check.indexed else check.describe()
