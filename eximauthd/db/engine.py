"""The database: its engines, connections and transactions, log-safe errors, dialect helpers.

All SQL is built with SQLAlchemy Core expressions and bound parameters.  Database exceptions are
turned into :class:`~eximauthd.errors.StorageError` with a message made only of the error class and
its code: SQLAlchemy's own messages can carry bound parameters (hashes) and URLs (passwords).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from ..errors import EximauthdError, SchemaMissingError, StorageError, ValueTooLongError
from ..files import create_private
from ..settings import DatabaseConfig
from .failover import NodeSet, galera_session

__all__ = [
    "MYSQL_DIALECTS",
    "Database",
    "caseless",
    "create_engine",
    "describe_location",
    "exactly",
    "is_duplicate",
    "is_lost_connection",
    "translate_errors",
]

_log = logging.getLogger("eximauthd.db")

T = TypeVar("T")

MYSQL_DIALECTS = frozenset({"mysql", "mariadb"})
"""SQLAlchemy's names of MySQL and MariaDB, which share their SQL and their collations."""

# MySQL/MariaDB error codes worth a specific message.
_MYSQL_NO_TABLE = 1146
_MYSQL_NO_COLUMN = 1054
_MYSQL_TOO_LONG = 1406
_MYSQL_MESSAGES = {
    1044: "access denied to the database",
    1045: "access denied (user or password wrong)",
    1049: "unknown database",
    1146: "table missing",
    2003: "cannot connect to the database server",
    2005: "unknown database server host",
    2006: "database server has gone away",
    2013: "lost connection to the database server",
}
# Errors about reaching the server, where naming the server is the fix's first half.
_MYSQL_WHERE = frozenset({1044, 1045, 1049, 2003, 2005, 2006, 2013})
# Only an identifier is ever quoted from a server's message: never a value.
_QUOTED_COLUMN = re.compile(r"(?:Unknown column|no such column:|too long for column) ?'?"
                            r"([A-Za-z0-9_.$]{1,130})'?")
_STATEMENT_TABLE = re.compile(r"\b(?:FROM|UPDATE|INTO)\s+[`\"]?([A-Za-z0-9_$]{1,64})",
                              re.IGNORECASE)


def _named_column(text: str, statement: str | None) -> tuple[str, str]:
    """The column a server's message names and the table of the statement (SQL text only:
    SQLAlchemy's statements hold placeholders, never the bound values)."""
    column = m.group(1) if (m := _QUOTED_COLUMN.search(text)) else "?"
    table = m.group(1) if statement and (m := _STATEMENT_TABLE.search(statement)) else "?"
    return column.rsplit(".", 1)[-1], table


def _safe_error(exc: SQLAlchemyError, what: str, where: str = "") -> StorageError:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    args = orig.args if orig is not None else ()
    code = args[0] if args and isinstance(args[0], int) else None
    text = str(orig) if orig is not None else ""
    statement = exc.statement if isinstance(exc, DBAPIError) else None
    if code == _MYSQL_NO_TABLE or "no such table" in text:
        return SchemaMissingError(
            f"{what}: table missing; run `eximauthd db upgrade` (or check the [legacy] table name)"
        )
    if code == _MYSQL_NO_COLUMN or "no such column" in text:
        column, table = _named_column(text, statement)
        return StorageError(f"{what}: the table {table} has no column {column} (check the "
                            "[legacy] column names in the configuration)")
    if code == _MYSQL_TOO_LONG:
        column, table = _named_column(text, statement)
        return ValueTooLongError(f"{what}: the column {column} of {table} is too narrow for an "
                                 "argon2id hash (`eximauthd migrate-passwords --dry-run` shows "
                                 "the ALTER TABLE that widens it)")
    detail = _MYSQL_MESSAGES.get(code, "") if code is not None else ""
    if detail and where and code in _MYSQL_WHERE:
        detail = f"{detail} at {where}"
    if not detail and "unable to open database file" in text:
        detail = f"cannot open the SQLite file{' ' + where if where else ''}"
    if not detail and "database is locked" in text:
        detail = f"SQLite database{' ' + where if where else ''} is locked"
    label = type(orig).__name__ if orig is not None else type(exc).__name__
    suffix = f" {code}" if code is not None else ""
    return StorageError(f"{what}: {detail or 'database error'} ({label}{suffix})")


def describe_location(url: str | sa.engine.URL) -> str:
    """Where *url* points, fit for an error: ``host:port/database`` or the SQLite file's path;
    never the user or password."""
    parsed = sa.engine.make_url(url)
    if parsed.drivername.startswith("sqlite"):
        return os.path.abspath(parsed.database) if parsed.database else "(memory)"
    return f"{parsed.host or 'localhost'}:{parsed.port or 3306}/{parsed.database or ''}"


@contextlib.contextmanager
def translate_errors(what: str, where: str | sa.engine.URL = "") -> Iterator[None]:
    """Turn SQLAlchemy exceptions raised inside the block into log-safe StorageErrors; *where*
    (a URL, described by :func:`describe_location` only on error) is named in the errors about
    reaching the database."""
    try:
        yield
    except SQLAlchemyError as exc:
        place = where if isinstance(where, str) else describe_location(where)
        raise _safe_error(exc, what, place) from None


def create_engine(url: str, connect_timeout: int = 3, password: str = "", *,
                  autocommit: bool = False, unbounded_io: bool = False) -> Engine:
    """Make an engine with the settings eximauthd needs on either backend.

    *password* (``database.password_file``'s) is set on the parsed URL object, never spliced
    into the URL's text.

    ``hide_parameters`` keeps bound values (hashes) out of every SQLAlchemy message; the
    connect timeout keeps a dead database from stalling a decision past Exim's readsocket timeout.
    A SQLite file is created mode 0600 (its -wal and -shm follow) before SQLite opens it.

    No pre-ping: it is one more round trip on every checkout.  A pooled connection found dead
    is retried once on a fresh one instead, by :meth:`Database.run` (reads and idempotent
    statements only).  With *autocommit* every statement is its own transaction, and the
    rollback a checkout would end with is skipped (nothing is open; see :meth:`Database.run`).
    *unbounded_io* drops MySQL's read and write timeouts, for DDL that may run for minutes.
    """
    # No pool reset either: a Connection ends its own transaction (begin() commits or rolls
    # back, connect() rolls back on close), and a second ROLLBACK at check-in is a round trip
    # more for nothing.
    options: dict[str, Any] = {"pool_reset_on_return": None}
    if autocommit:
        options |= {"isolation_level": "AUTOCOMMIT", "skip_autocommit_rollback": True}
    parsed = sa.engine.make_url(url)
    if password:
        parsed = parsed.set(password=password)
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:" and "uri" not in parsed.query:
            # Every hash is in this file: it must not be born world-readable (umask 022),
            # whether the CLI, `serve` or Alembic opens it first.
            create_private(parsed.database)
        engine = sa.create_engine(
            parsed, hide_parameters=True, connect_args={"timeout": connect_timeout}, **options
        )
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    engine = sa.create_engine(
        parsed,
        hide_parameters=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": connect_timeout,
            "charset": "utf8mb4",
        } | ({} if unbounded_io else {
            "read_timeout": max(connect_timeout, 5),
            "write_timeout": max(connect_timeout, 5),
        }),
        **options,
    )
    sa.event.listen(engine, "do_connect", _utf8_password)
    sa.event.listen(engine, "connect", galera_session)
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
    """The primary engine (writes) and, when configured, a replica engine (reads).

    With ``failover_urls`` the primary is whichever node :class:`~.failover.NodeSet` has in use.
    """

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        # Every node (and the replica) logs in with the same password_file, if one is set.
        self.nodes = NodeSet(
            [config.url, *config.failover_urls],
            lambda url: create_engine(url, config.connect_timeout, config.password),
            check_seconds=config.failover_check_seconds,
        ) if config.failover_urls else None
        self._primary = (None if self.nodes is not None
                         else create_engine(config.url, config.connect_timeout, config.password))
        self._replica = (
            create_engine(config.replica_url, config.connect_timeout, config.password)
            if config.replica_url else None
        )
        # The request path's pools: single statements in autocommit (see run()), one twin per
        # engine.  Separate pools, because switching one connection in and out of autocommit
        # costs two statements per checkout.
        pairs = ([*zip(self.nodes.urls, self.nodes.engines, strict=True)]
                 if self.nodes is not None else [(config.url, self._primary)])
        if self._replica is not None:
            pairs.append((config.replica_url, self._replica))
        self._twins: dict[int, Engine] = {
            id(engine): _autocommit_twin(engine, url, config.connect_timeout, config.password)
            for url, engine in pairs if engine is not None}

    def __repr__(self) -> str:
        return f"Database({self.config!r})"

    @property
    def dialect(self) -> str:
        # Every node is the same kind of server: no need to choose one (no I/O) to know it.
        return (self.nodes.engines[0] if self.nodes is not None
                else self.primary).dialect.name

    @property
    def is_mysql(self) -> bool:
        """MySQL or MariaDB (else SQLite)."""
        return self.dialect in MYSQL_DIALECTS

    @property
    def primary(self) -> Engine:
        if self.nodes is not None:
            return self.nodes.current
        assert self._primary is not None  # set whenever nodes is None
        return self._primary

    @property
    def replica(self) -> Engine:
        return self._replica if self._replica is not None else self.primary

    @property
    def auto_primary(self) -> Engine:
        """The autocommit twin of :attr:`primary` (of the node in use, with failover)."""
        return self._twins[id(self.primary)]

    @property
    def auto_replica(self) -> Engine:
        return self._twins[id(self.replica)]

    @property
    def where(self) -> str:
        """The primary in use, fit for an error (:func:`describe_location`)."""
        return describe_location(self.primary.url)

    @contextlib.contextmanager
    def read(self, what: str) -> Iterator[Connection]:
        """A connection for reads, each statement its own snapshot (autocommit): no
        REPEATABLE READ snapshot outlives a statement, and no rollback ends the checkout."""
        engine = self.replica
        with translate_errors(what, engine.url), self._watched(engine, what), \
                self._twins[id(engine)].connect() as conn:
            yield conn

    def run(self, what: str, work: Callable[[Connection], T], *, primary: bool = False,
            retry: bool = True) -> T:
        """``work(connection)`` in autocommit: each statement commits by itself, and nothing
        else is sent (no BEGIN, COMMIT, ROLLBACK or ping).  *work* must consume its results.

        A pooled connection that turns out dead (the server restarted, ``KILL CONNECTION``,
        a timeout) is tried once more on a fresh one, when *retry*: only for reads and
        idempotent statements, since the first may have run before the connection died.
        """
        engine = self.primary if primary else self.replica
        twin = self._twins[id(engine)]
        with translate_errors(what, engine.url), self._watched(engine, what):
            try:
                with twin.connect() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if not retry or not is_lost_connection(exc):
                    raise
                _log.info("%s: the pooled connection was lost; trying once more on a new one",
                          what)
            with twin.connect() as conn:
                return work(conn)

    @contextlib.contextmanager
    def write(self, what: str) -> Iterator[Connection]:
        engine = self.primary
        with (translate_errors(what, engine.url),
              self._watched(engine, what), engine.begin() as conn):
            yield conn

    def transact(self, what: str, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction on the primary, retried once from the start
        when the connection turns out lost before the COMMIT was sent: the server rolled back
        whatever the first try did, so nothing is applied twice.  A connection lost during
        the COMMIT itself is not retried (whether it committed is unknown).
        """
        engine = self.primary
        with translate_errors(what, engine.url), self._watched(engine, what):
            try:
                return self._transact_once(engine, work)
            except _LostBeforeCommit:
                _log.info("%s: the pooled connection was lost; trying once more on a new one",
                          what)
            return self._transact_once(engine, work, retry=False)

    @staticmethod
    def _transact_once(engine: Engine, work: Callable[[Connection], T],
                       retry: bool = True) -> T:
        with engine.connect() as conn:
            with conn.begin():
                try:
                    result = work(conn)
                except DBAPIError as exc:
                    if retry and is_lost_connection(exc):
                        raise _LostBeforeCommit from exc
                    raise
            return result

    @contextlib.contextmanager
    def _watched(self, engine: Engine, what: str) -> Iterator[None]:
        # Failover: no request on a node known unusable, and a node failure seen by a request
        # moves the next ones on (this one still fails: its caller defers).
        if self.nodes is None or engine is self._replica:
            yield
            return
        if not self.nodes.usable:
            raise StorageError(f"{what}: no database node usable")
        try:
            yield
        except SQLAlchemyError as exc:
            self.nodes.failed(engine, exc)
            raise

    def dispose(self) -> None:
        if self.nodes is not None:
            self.nodes.dispose()
        elif self._primary is not None:
            self._primary.dispose()
        if self._replica is not None:
            self._replica.dispose()
        for twin in self._twins.values():
            twin.dispose()


def _autocommit_twin(engine: Engine, url: str, connect_timeout: int, password: str) -> Engine:
    """An autocommit engine on the same database as *engine*: a pool of its own, except for
    an in-memory SQLite database, which exists only in *engine*'s connections."""
    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return create_engine(url, connect_timeout, password, autocommit=True)


class _LostBeforeCommit(EximauthdError):
    """Inside :meth:`Database.transact` only: the first try lost its connection."""


# MySQL/MariaDB client errors of a connection that died under a statement.
_LOST = frozenset({2006, 2013})


def is_lost_connection(exc: DBAPIError) -> bool:
    """Did *exc* come from a connection that is gone (not from the statement itself)?"""
    if exc.connection_invalidated:  # SQLAlchemy's dialect recognised a disconnect
        return True
    args: tuple[Any, ...] = getattr(exc.orig, "args", ())
    return bool(args) and args[0] in _LOST


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
