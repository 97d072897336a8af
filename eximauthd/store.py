"""Account storage: eximauthd's own tables or an existing (legacy) table, same interface.

All SQL is built with SQLAlchemy Core expressions and bound parameters.  Database exceptions are
turned into :class:`~eximauthd.errors.StorageError` with a message made only of the error class and
its code: SQLAlchemy's own messages can carry bound parameters (hashes) and URLs (passwords).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from . import schema
from .addresses import Address
from .config import Config, DatabaseConfig, LegacyConfig
from .errors import (
    SchemaMissingError,
    StorageError,
    UserExistsError,
    UserNotFoundError,
)
from .files import create_private

__all__ = [
    "AccountStore",
    "Database",
    "Grant",
    "GrantStore",
    "LegacyAccountStore",
    "OwnAccountStore",
    "UserRecord",
    "make_account_store",
    "translate_errors",
]

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


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One account as stored.  ``repr`` never shows the stored password or hash."""

    address: str
    enabled: bool
    password: str | None = field(repr=False)

    def __repr__(self) -> str:
        shown = "None" if self.password is None else "'***'"
        return f"UserRecord(address={self.address!r}, enabled={self.enabled}, password={shown})"


@dataclass(frozen=True, slots=True)
class Grant:
    """``user`` may send with envelope sender ``sender`` (an address or ``@domain``)."""

    user: str
    sender: str


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


def create_engine(url: str, connect_timeout: int = 3) -> Engine:
    """Make an engine with the settings eximauthd needs on either backend.

    ``hide_parameters`` keeps bound values (hashes) out of every SQLAlchemy message; the
    connect timeout keeps a dead database from stalling a decision past Exim's readsocket timeout.
    A SQLite file is created mode 0600 (its -wal and -shm follow) before SQLite opens it.
    """
    parsed = sa.engine.make_url(url)
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
    return sa.create_engine(
        parsed,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": connect_timeout,
            "read_timeout": max(connect_timeout, 5),
            "write_timeout": max(connect_timeout, 5),
            "charset": "utf8mb4",
        },
    )


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
        self.primary = create_engine(config.url, config.connect_timeout)
        self.replica = (
            create_engine(config.replica_url, config.connect_timeout)
            if config.replica_url else self.primary
        )

    def __repr__(self) -> str:
        return f"Database({self.config!r})"

    @property
    def dialect(self) -> str:
        return self.primary.dialect.name

    @contextlib.contextmanager
    def read(self, what: str) -> Iterator[Connection]:
        with translate_errors(what), self.replica.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self, what: str) -> Iterator[Connection]:
        with translate_errors(what), self.primary.begin() as conn:
            yield conn

    def ping(self) -> None:
        """Raise :class:`StorageError` unless the read database answers."""
        with self.read("ping") as conn:
            conn.execute(sa.select(sa.literal(1)))

    def dispose(self) -> None:
        self.primary.dispose()
        if self.replica is not self.primary:
            self.replica.dispose()


def _exactly(column: sa.ColumnElement[Any], value: str, dialect: str) -> sa.ColumnElement[bool]:
    """Compare byte for byte: MySQL's default collations ignore case and trailing spaces.

    (A legacy column in a charset other than utf8 only matches ASCII values this way, so a
    non-ASCII old value is never swapped there: safe, the upgrade is just skipped.)
    """
    if dialect in {"mysql", "mariadb"}:
        return sa.cast(column, sa.LargeBinary) == value.encode("utf-8")
    return column == value


def _caseless(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """Match a lower-case value caselessly.

    MySQL's default collations already compare caselessly and can use the column's index;
    SQLite compares bytes, so it lower-cases the column.  (A legacy column with a ``_bin``
    collation on MySQL is matched case-sensitively: keep its values lower-case.)
    """
    if dialect in {"mysql", "mariadb"}:
        return column
    return sa.func.lower(column)


class AccountStore(Protocol):
    """Where :mod:`eximauthd.authn` and the CLI find and change accounts."""

    db: Database

    def find(self, address: Address, limit: int = 2) -> list[UserRecord]:
        """Return the rows for *address* (more than one means the table is ambiguous)."""
        ...

    def find_many(self, addresses: Sequence[Address]) -> dict[str, list[UserRecord]]:
        """The rows of several addresses at once, by canonical address (absent: no row)."""
        ...

    def replace_password(self, address: Address, old: str, new: str) -> bool:
        """Set *new* where the stored value is still exactly *old*; True if a row changed."""
        ...

    def add(self, address: Address, password_hash: str) -> None: ...

    def set_password(self, address: Address, password_hash: str) -> None: ...

    def set_enabled(self, address: Address, enabled: bool) -> None: ...

    def delete(self, address: Address) -> None: ...

    def list(self) -> list[UserRecord]: ...


class OwnAccountStore:
    """Accounts in ``eximauthd_users``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._t = schema.users

    def __repr__(self) -> str:
        return f"OwnAccountStore({self.db!r})"

    def find(self, address: Address, limit: int = 2) -> list[UserRecord]:
        t = self._t
        query = (sa.select(t.c.address, t.c.enabled, t.c.password_hash)
                 .where(t.c.address == str(address)).limit(limit))
        with self.db.read("look up user") as conn:
            rows = conn.execute(query).all()
        return [UserRecord(r.address, bool(r.enabled), r.password_hash) for r in rows]

    def find_many(self, addresses: Sequence[Address]) -> dict[str, list[UserRecord]]:
        t = self._t
        found: dict[str, list[UserRecord]] = {}
        with self.db.read("look up users") as conn:
            for chunk in _chunks([str(a) for a in addresses]):
                query = sa.select(t.c.address, t.c.enabled, t.c.password_hash).where(
                    t.c.address.in_(chunk))
                for r in conn.execute(query):
                    found.setdefault(r.address.lower(), []).append(
                        UserRecord(r.address, bool(r.enabled), r.password_hash))
        return found

    def replace_password(self, address: Address, old: str, new: str) -> bool:
        t = self._t
        query = (sa.update(t)
                 .where(t.c.address == str(address),
                        _exactly(t.c.password_hash, old, self.db.dialect))
                 .values(password_hash=new, updated_at=sa.func.now()))
        with self.db.write("rehash password") as conn:
            return conn.execute(query).rowcount == 1

    def add(self, address: Address, password_hash: str) -> None:
        query = sa.insert(self._t).values(
            address=str(address), domain=address.domain, password_hash=password_hash, enabled=True
        )
        try:
            with self.db.write("add user") as conn:
                conn.execute(query)
        except StorageError as exc:
            if _is_duplicate(exc):
                raise UserExistsError(f"user already exists: {address}") from None
            raise

    def set_password(self, address: Address, password_hash: str) -> None:
        self._update_one(address, "change password",
                         password_hash=password_hash, updated_at=sa.func.now())

    def set_enabled(self, address: Address, enabled: bool) -> None:
        self._update_one(address, "enable user" if enabled else "disable user",
                         enabled=enabled, updated_at=sa.func.now())

    def delete(self, address: Address) -> None:
        with self.db.write("delete user") as conn:
            count = conn.execute(sa.delete(self._t).where(self._t.c.address == str(address)))
            if count.rowcount != 1:
                raise UserNotFoundError(f"no such user: {address}")

    def list(self) -> list[UserRecord]:
        t = self._t
        query = sa.select(t.c.address, t.c.enabled, t.c.password_hash).order_by(t.c.address)
        with self.db.read("list users") as conn:
            return [UserRecord(r.address, bool(r.enabled), r.password_hash)
                    for r in conn.execute(query)]

    def _update_one(self, address: Address, what: str, **values: Any) -> None:
        query = sa.update(self._t).where(self._t.c.address == str(address)).values(**values)
        with self.db.write(what) as conn:
            if conn.execute(query).rowcount != 1:
                raise UserNotFoundError(f"no such user: {address}")


def _chunks(items: list[Any], size: int = 200) -> Iterator[list[Any]]:
    # Bounded statements: a few hundred parameters each, whatever the number of items.
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _is_duplicate(exc: StorageError) -> bool:
    """Was *exc* made from a uniqueness violation (IntegrityError) by translate_errors?"""
    return isinstance(exc.__context__, IntegrityError)


class LegacyAccountStore:
    """Accounts in an existing table, described by ``[legacy]`` without changing its shape.

    The seed's ``users(username, domain, password, smtp)`` maps as ``local_part_column =
    "username"``, ``domain_column = "domain"``, ``enabled_column = "smtp"``, ``enabled_when =
    "> 0"``.  Only the named columns are read or written.
    """

    def __init__(self, db: Database, legacy: LegacyConfig) -> None:
        self.db = db
        self.legacy = legacy
        self._rule = legacy.enabled_rule
        columns = [sa.Column(legacy.password_column, sa.String)]
        if legacy.address_column:
            columns.append(sa.Column(legacy.address_column, sa.String))
        else:
            columns += [sa.Column(legacy.local_part_column, sa.String),
                        sa.Column(legacy.domain_column, sa.String)]
        if legacy.enabled_column:
            columns.append(sa.Column(legacy.enabled_column, sa.String))
        # A detached description of the table: nothing is reflected or created from it.
        self._t = sa.Table(legacy.table, sa.MetaData(), *columns)

    def __repr__(self) -> str:
        return f"LegacyAccountStore(table={self.legacy.table!r}, {self.db!r})"

    @property
    def _password(self) -> sa.Column[Any]:
        return self._t.c[self.legacy.password_column]

    def _address_columns(self) -> list[sa.ColumnElement[Any]]:
        c = self._t.c
        if self.legacy.address_column:
            return [c[self.legacy.address_column]]
        return [c[self.legacy.local_part_column], c[self.legacy.domain_column]]

    def _match(self, address: Address) -> sa.ColumnElement[bool]:
        c, dialect = self._t.c, self.db.dialect
        if self.legacy.address_column:
            return _caseless(c[self.legacy.address_column], dialect) == str(address)
        return sa.and_(
            _caseless(c[self.legacy.local_part_column], dialect) == address.local,
            _caseless(c[self.legacy.domain_column], dialect) == address.domain,
        )

    def _select(self) -> sa.Select[Any]:
        columns: list[sa.ColumnElement[Any]] = [*self._address_columns(), self._password]
        if self.legacy.enabled_column:
            columns.append(self._t.c[self.legacy.enabled_column])
        return sa.select(*columns)

    def _record(self, row: Sequence[Any]) -> UserRecord:
        if self.legacy.address_column:
            address, rest = str(row[0]), row[1:]
        else:
            address, rest = f"{row[0]}@{row[1]}", row[2:]
        enabled = self._rule.matches(rest[1]) if self.legacy.enabled_column else True
        password = None if rest[0] is None else str(rest[0])
        return UserRecord(address.lower(), enabled, password)

    def find(self, address: Address, limit: int = 2) -> list[UserRecord]:
        query = self._select().where(self._match(address)).limit(limit)
        with self.db.read("look up user") as conn:
            return [self._record(r) for r in conn.execute(query)]

    def find_many(self, addresses: Sequence[Address]) -> dict[str, list[UserRecord]]:
        found: dict[str, list[UserRecord]] = {}
        with self.db.read("look up users") as conn:
            for chunk in _chunks(list(addresses)):
                query = self._select().where(sa.or_(*(self._match(a) for a in chunk)))
                for r in conn.execute(query):
                    record = self._record(r)
                    found.setdefault(record.address, []).append(record)
        return found

    def replace_password(self, address: Address, old: str, new: str) -> bool:
        query = (sa.update(self._t)
                 .where(self._match(address), _exactly(self._password, old, self.db.dialect))
                 .values({self.legacy.password_column: new}))
        with self.db.write("rehash password") as conn:
            result = conn.execute(query)
            if result.rowcount > 1:
                # Two rows for one login: refuse to touch either rather than guess.
                conn.rollback()
                return False
            return result.rowcount == 1

    def add(self, address: Address, password_hash: str) -> None:
        values: dict[str, Any] = {self.legacy.password_column: password_hash}
        if self.legacy.address_column:
            values[self.legacy.address_column] = str(address)
        else:
            values[self.legacy.local_part_column] = address.local
            values[self.legacy.domain_column] = address.domain
        if self.legacy.enabled_column:
            values[self.legacy.enabled_column] = self.legacy.enabled_value
        with self.db.write("add user") as conn:
            exists = conn.execute(sa.select(sa.func.count()).select_from(self._t)
                                  .where(self._match(address))).scalar_one()
            if exists:
                raise UserExistsError(f"user already exists: {address}")
            conn.execute(sa.insert(self._t).values(values))

    def set_password(self, address: Address, password_hash: str) -> None:
        self._update_one(address, "change password", {self.legacy.password_column: password_hash})

    def set_enabled(self, address: Address, enabled: bool) -> None:
        if not self.legacy.enabled_column:
            raise StorageError("legacy.enabled_column is not set: accounts cannot be disabled")
        value = self.legacy.enabled_value if enabled else self.legacy.disabled_value
        self._update_one(address, "enable user" if enabled else "disable user",
                         {self.legacy.enabled_column: value})

    def delete(self, address: Address) -> None:
        with self.db.write("delete user") as conn:
            count = conn.execute(sa.delete(self._t).where(self._match(address))).rowcount
            if count != 1:
                conn.rollback()
                raise UserNotFoundError(
                    f"no such user: {address}" if count == 0
                    else f"{count} rows match {address}; refusing to delete"
                )

    def list(self) -> list[UserRecord]:
        query = self._select().order_by(*self._address_columns())
        with self.db.read("list users") as conn:
            return [self._record(r) for r in conn.execute(query)]

    def _update_one(self, address: Address, what: str, values: dict[str, Any]) -> None:
        with self.db.write(what) as conn:
            count = conn.execute(sa.update(self._t).where(self._match(address))
                                 .values(values)).rowcount
            if count != 1:
                conn.rollback()
                raise UserNotFoundError(
                    f"no such user: {address}" if count == 0
                    else f"{count} rows match {address}; refusing to change them"
                )


class GrantStore:
    """Send-as grants in ``eximauthd_grants``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._t = schema.grants

    def add(self, grant: Grant) -> bool:
        """Record *grant*; False when it already existed."""
        try:
            with self.db.write("add grant") as conn:
                conn.execute(sa.insert(self._t).values(user_address=grant.user,
                                                      sender=grant.sender))
        except StorageError as exc:
            if _is_duplicate(exc):
                return False
            raise
        return True

    def remove(self, grant: Grant) -> bool:
        """Delete *grant*; False when there was none."""
        t = self._t
        with self.db.write("remove grant") as conn:
            result = conn.execute(sa.delete(t).where(t.c.user_address == grant.user,
                                                     t.c.sender == grant.sender))
            return result.rowcount > 0

    def list(self, user: str | None = None) -> list[Grant]:
        t = self._t
        query = sa.select(t.c.user_address, t.c.sender).order_by(t.c.user_address, t.c.sender)
        if user is not None:
            query = query.where(t.c.user_address == user)
        with self.db.read("list grants") as conn:
            return [Grant(r.user_address, r.sender) for r in conn.execute(query)]


def make_account_store(config: Config, db: Database) -> AccountStore:
    """The store the configuration asks for: legacy table if ``[legacy]`` is set, else our own."""
    if config.legacy.configured:
        return LegacyAccountStore(db, config.legacy)
    return OwnAccountStore(db)
