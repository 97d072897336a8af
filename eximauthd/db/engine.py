"""The database: its engines, connections and transactions, log-safe errors, dialect helpers.

All SQL is built with SQLAlchemy Core expressions and bound parameters.  Database exceptions are
turned into :class:`~eximauthd.errors.StorageError` with a message made only of the error class and
its code: SQLAlchemy's own messages can carry bound parameters (hashes) and URLs (passwords).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from ..errors import SchemaMissingError, StorageError
from ..files import create_private
from ..settings import DatabaseConfig

__all__ = [
    "MYSQL_DIALECTS",
    "Database",
    "caseless",
    "create_engine",
    "exactly",
    "is_duplicate",
    "translate_errors",
]

MYSQL_DIALECTS = frozenset({"mysql", "mariadb"})
"""SQLAlchemy's names of MySQL and MariaDB, which share their SQL and their collations."""

# MySQL/MariaDB error codes worth a specific message.
_MYSQL_NO_TABLE = 1146
_MYSQL_MESSAGES = {
    1044: "access denied to the database",
    1045: "access denied (user or password wrong)",
    1049: "unknown database",
    1146: "table missing",
    2003: "cannot connect to the database server",
    2006: "database server has gone away",
    2013: "lost connection to the database server",
}


def _safe_error(exc: SQLAlchemyError, what: str) -> StorageError:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    args = orig.args if orig is not None else ()
    code = args[0] if args and isinstance(args[0], int) else None
    text = str(orig) if orig is not None else ""
    if code == _MYSQL_NO_TABLE or "no such table" in text:
        return SchemaMissingError(
            f"{what}: table missing; run `eximauthd db upgrade` (or check the [legacy] table name)"
        )
    detail = _MYSQL_MESSAGES.get(code, "") if code is not None else ""
    if not detail and "unable to open database file" in text:
        detail = "cannot open the SQLite file"
    if not detail and "database is locked" in text:
        detail = "SQLite database is locked"
    label = type(orig).__name__ if orig is not None else type(exc).__name__
    suffix = f" {code}" if code is not None else ""
    return StorageError(f"{what}: {detail or 'database error'} ({label}{suffix})")


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn SQLAlchemy exceptions raised inside the block into log-safe StorageErrors."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise _safe_error(exc, what) from None


def create_engine(url: str, connect_timeout: int = 3, password: str = "", *,
                  unbounded_io: bool = False) -> Engine:
    """Make an engine with the settings eximauthd needs on either backend.

    *password* (``database.password_file``'s) is set on the parsed URL object, never spliced
    into the URL's text.

    ``hide_parameters`` keeps bound values (hashes) out of every SQLAlchemy message; the
    connect timeout keeps a dead database from stalling a decision past Exim's readsocket timeout.
    A SQLite file is created mode 0600 (its -wal and -shm follow) before SQLite opens it.
    *unbounded_io* drops MySQL's read and write timeouts, for DDL that may run for minutes.
    """
    parsed = sa.engine.make_url(url)
    if password:
        parsed = parsed.set(password=password)
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:" and "uri" not in parsed.query:
            # Every hash is in this file: it must not be born world-readable (umask 022),
            # whether the CLI, `serve` or Alembic opens it first.
            create_private(parsed.database)
        engine = sa.create_engine(
            parsed, hide_parameters=True, connect_args={"timeout": connect_timeout}
        )
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    engine = sa.create_engine(
        parsed,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": connect_timeout,
            "charset": "utf8mb4",
        } | ({} if unbounded_io else {
            "read_timeout": max(connect_timeout, 5),
            "write_timeout": max(connect_timeout, 5),
        }),
    )
    sa.event.listen(engine, "do_connect", _utf8_password)
    return engine


def _utf8_password(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    # PyMySQL encodes a str password as Latin-1: a password with a character beyond it raised
    # UnicodeEncodeError (a traceback, not a StorageError), and "é" went out as one byte where
    # the server hashed the two of UTF-8, as the mysql client on a UTF-8 terminal sends them.
    password = cparams.get("password")
    if isinstance(password, str):
        cparams["password"] = password.encode("utf-8")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the service read while the CLI writes; busy_timeout waits instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=3000")
    cursor.close()


class Database:
    """The primary engine (writes) and, when configured, a replica engine (reads)."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.primary = create_engine(config.url, config.connect_timeout, config.password)
        self.replica = (
            create_engine(config.replica_url, config.connect_timeout, config.password)
            if config.replica_url else self.primary
        )

    def __repr__(self) -> str:
        return f"Database({self.config!r})"

    @property
    def dialect(self) -> str:
        return self.primary.dialect.name

    @property
    def is_mysql(self) -> bool:
        """MySQL or MariaDB (else SQLite)."""
        return self.dialect in MYSQL_DIALECTS

    @contextlib.contextmanager
    def read(self, what: str) -> Iterator[Connection]:
        with translate_errors(what), self.replica.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self, what: str) -> Iterator[Connection]:
        with translate_errors(what), self.primary.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.primary.dispose()
        if self.replica is not self.primary:
            self.replica.dispose()


def is_duplicate(exc: StorageError) -> bool:
    """Was *exc* made from a uniqueness violation (IntegrityError) by translate_errors?"""
    return isinstance(exc.__context__, IntegrityError)


class _Utf8Bytes(sa.TypeDecorator[bytes]):
    """A value compared as bytes: text is sent as its UTF-8 encoding."""

    impl = sa.LargeBinary
    cache_ok = True

    def process_bind_param(self, value: str | bytes | None, dialect: Dialect) -> bytes | None:
        return value.encode("utf-8") if isinstance(value, str) else value


def exactly(column: sa.ColumnElement[Any], value: str | bytes | sa.BindParameter[Any],
            dialect: str) -> sa.ColumnElement[bool]:
    """Compare byte for byte: MySQL's default collations ignore case, accents and trailing
    spaces, and an SQLite column may be declared ``NOCASE`` or ``RTRIM``.

    *value* may be an untyped :func:`sqlalchemy.bindparam`, so that one statement serves many
    values; it is sent as bytes where the comparison is of bytes, like a value given here.
    (A legacy column in a charset other than utf8 only matches ASCII values this way, so a
    non-ASCII old value is never swapped there: safe, the upgrade is just skipped.)
    """
    if dialect in MYSQL_DIALECTS or isinstance(value, bytes):
        return sa.cast(column, sa.LargeBinary) == sa.type_coerce(value, _Utf8Bytes())
    return column.collate("BINARY") == value


def caseless(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """Find the candidates for a lower-case value caselessly (the caller filters them).

    MySQL's default collations already compare caselessly and can use the column's index;
    SQLite compares bytes, so it lower-cases the column.  (A legacy column with a ``_bin``
    collation on MySQL is matched case-sensitively: keep its values lower-case.)  What the
    collation calls equal is only a candidate: the caller decides, with
    :func:`~eximauthd.core.addresses.stored_address`.
    """
    if dialect in MYSQL_DIALECTS:
        return column
    return sa.func.lower(column)
