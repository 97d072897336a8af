"""Account storage: eximauthd's own tables or an existing (legacy) table, same interface.

Every statement goes through :class:`~eximauthd.db.engine.Database`, which turns database errors
into log-safe StorageErrors.

Who a row is, is decided here in Python, never by the database's collation: a lookup asks the
database for the rows its collation calls equal to the login (so the login columns' index
serves it), then keeps only those that :func:`~eximauthd.core.addresses.stored_address` says
are that very account, byte for byte.  Writes go to those rows only, compared byte for byte
(:func:`~eximauthd.db.engine.exactly`), so ``alicé`` is never changed by a command for ``alice``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..core.addresses import Address, stored_address
from ..errors import StorageError, UserExistsError, UserNotFoundError
from ..settings import Config, LegacyConfig
from . import tables
from .engine import Database, caseless, exactly, is_duplicate
from .prepared import Lookup, Prepared

__all__ = [
    "AccountStore",
    "LegacyAccountStore",
    "OwnAccountStore",
    "UserRecord",
    "legacy_address_columns",
    "make_account_store",
]

# The rows one lookup may read before the filter: the database's collation can call many rows
# equal to one login (alicé, ALICE, "alice "), and a LIMIT applied before the filter could
# keep the look-alikes and drop the account itself.  Past this, the lookup fails (defer)
# rather than guess; in a sane table the group is one row.
MAX_CANDIDATES = 100


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One account as stored.  ``repr`` never shows the stored password or hash."""

    address: str
    enabled: bool
    password: str | None = field(repr=False)

    def __repr__(self) -> str:
        shown = "None" if self.password is None else "'***'"
        return f"UserRecord(address={self.address!r}, enabled={self.enabled}, password={shown})"


def _bounded(rows: Sequence[Any], address: Address) -> Sequence[Any]:
    """*rows* unless there are more than :data:`MAX_CANDIDATES` (then StorageError: defer)."""
    if len(rows) > MAX_CANDIDATES:
        raise StorageError(f"look up user: more than {MAX_CANDIDATES} rows collate equal to "
                           f"{address}; refusing to decide (clean up the table)")
    return rows


class AccountStore(Protocol):
    """Where :mod:`eximauthd.auth.authn` and the CLI find and change accounts."""

    db: Database

    def find(self, address: Address, limit: int = 2) -> list[UserRecord]:
        """Return the rows for *address* (more than one means the table is ambiguous)."""
        ...

    def find_many(self, addresses: Sequence[Address]) -> dict[str, list[UserRecord]]:
        """The rows of several addresses at once, by canonical address (absent: no row)."""
        ...

    @property
    def login(self) -> Lookup:
        """The query :meth:`find` runs, built once: for a caller that sends it inside another
        statement, and for :class:`~eximauthd.db.prepared.Prepared`."""
        ...

    def lookup(self, address: Address) -> sa.Select[Any]:
        """:attr:`login` with *address*'s values bound (what EXPLAIN looks at)."""
        ...

    def records(self, address: Address, rows: Sequence[Sequence[Any]],
                limit: int = 2) -> list[UserRecord]:
        """What :meth:`find` returns for the *rows* its :meth:`lookup` read."""
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
        self._t = tables.users
        t = self._t
        self._login = Lookup(sa.select(t.c.address, t.c.enabled, t.c.password_hash)
                             .where(t.c.address == sa.bindparam("login0"))
                             .limit(MAX_CANDIDATES + 1),
                             lambda address: {"login0": str(address)})
        self._find = Prepared(self._login.statement)

    def __repr__(self) -> str:
        return f"OwnAccountStore({self.db!r})"

    @property
    def login(self) -> Lookup:
        return self._login

    def lookup(self, address: Address) -> sa.Select[Any]:
        return self._login.bound(address)

    def records(self, address: Address, rows: Sequence[Sequence[Any]],
                limit: int = 2) -> list[UserRecord]:
        return [UserRecord(str(address), bool(enabled), password)
                for stored, enabled, password in _bounded(rows, address)
                if stored_address(stored) == address][:limit]

    def find(self, address: Address, limit: int = 2) -> list[UserRecord]:
        values = self._login.values(address)
        return self.records(address, self.db.run(
            "look up user", lambda conn: self._find.execute(conn, values).all()), limit)

    def find_many(self, addresses: Sequence[Address]) -> dict[str, list[UserRecord]]:
        t = self._t
        wanted = set(addresses)
        found: dict[str, list[UserRecord]] = {}
        with self.db.read("look up users") as conn:
            for chunk in _chunks([str(a) for a in addresses]):
                query = sa.select(t.c.address, t.c.enabled, t.c.password_hash).where(
                    t.c.address.in_(chunk))
                for r in conn.execute(query):
                    canonical = stored_address(r.address)
                    if canonical is None or canonical not in wanted:
                        continue  # a look-alike the collation matched
                    found.setdefault(str(canonical), []).append(
                        UserRecord(str(canonical), bool(r.enabled), r.password_hash))
        return found

    def _ids(self, conn: Connection, address: Address) -> list[int]:
        """The ids of the rows that are *address* (byte for byte, not by collation)."""
        t = self._t
        rows = _bounded(conn.execute(sa.select(t.c.id, t.c.address)
                                     .where(t.c.address == str(address))
                                     .limit(MAX_CANDIDATES + 1)).all(), address)
        return [int(r.id) for r in rows if stored_address(r.address) == address]

    def replace_password(self, address: Address, old: str, new: str) -> bool:
        t = self._t

        def swap(conn: Connection) -> bool:
            ids = self._ids(conn, address)
            if len(ids) != 1:
                return False
            query = (sa.update(t)
                     .where(t.c.id == ids[0], exactly(t.c.password_hash, old, self.db.dialect))
                     .values(password_hash=new, updated_at=sa.func.now()))
            return bool(conn.execute(query).rowcount == 1)

        return self.db.transact("rehash password", swap)

    def add(self, address: Address, password_hash: str) -> None:
        query = sa.insert(self._t).values(
            address=str(address), domain=address.domain, password_hash=password_hash, enabled=True
        )
        try:
            with self.db.write("add user") as conn:
                conn.execute(query)
        except StorageError as exc:
            if is_duplicate(exc):
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
            row_id = _one(self._ids(conn, address), address, "delete")
            if conn.execute(sa.delete(self._t).where(self._t.c.id == row_id)).rowcount != 1:
                raise UserNotFoundError(f"no such user: {address}")

    def list(self) -> list[UserRecord]:
        t = self._t
        query = sa.select(t.c.address, t.c.enabled, t.c.password_hash).order_by(t.c.address)
        with self.db.read("list users") as conn:
            return [UserRecord(r.address, bool(r.enabled), r.password_hash)
                    for r in conn.execute(query)]

    def _update_one(self, address: Address, what: str, **values: Any) -> None:
        with self.db.write(what) as conn:
            row_id = _one(self._ids(conn, address), address, "change")
            query = sa.update(self._t).where(self._t.c.id == row_id).values(**values)
            if conn.execute(query).rowcount != 1:
                raise UserNotFoundError(f"no such user: {address}")


def _one(found: list[Any], address: Address, verb: str) -> Any:
    """The one row of *address* among *found*; UserNotFoundError for none or several."""
    if len(found) != 1:
        raise UserNotFoundError(f"no such user: {address}" if not found
                                else f"{len(found)} rows match {address}; refusing to {verb} "
                                     "them")
    return found[0]


def _chunks(items: list[Any], size: int = 200) -> Iterator[list[Any]]:
    # Bounded statements: a few hundred parameters each, whatever the number of items.
    for i in range(0, len(items), size):
        yield items[i:i + size]


def legacy_address_columns(legacy: LegacyConfig) -> tuple[str, ...]:
    """The columns of a ``[legacy]`` table that hold a row's address: ``address_column``, or
    ``local_part_column`` and ``domain_column``."""
    if legacy.address_column:
        return (legacy.address_column,)
    return (legacy.local_part_column, legacy.domain_column)


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
        self._names = legacy_address_columns(legacy)
        columns = [sa.Column(name, sa.String) for name in (legacy.password_column, *self._names)]
        if legacy.enabled_column:
            columns.append(sa.Column(legacy.enabled_column, sa.String))
        # A detached description of the table: nothing is reflected or created from it.
        self._t = sa.Table(legacy.table, sa.MetaData(), *columns)
        dialect = db.dialect
        self._login = Lookup(
            self._select().where(sa.and_(*(
                caseless(column, dialect) == sa.bindparam(f"login{i}")
                for i, column in enumerate(self._address_columns())))).limit(MAX_CANDIDATES + 1),
            lambda address: {f"login{i}": value
                             for i, value in enumerate(self._address_values(address))})
        self._find = Prepared(self._login.statement)

    def __repr__(self) -> str:
        return f"LegacyAccountStore(table={self.legacy.table!r}, {self.db!r})"

    @property
    def _password(self) -> sa.Column[Any]:
        return self._t.c[self.legacy.password_column]

    def _address_columns(self) -> list[sa.ColumnElement[Any]]:
        return [self._t.c[name] for name in self._names]

    def _address_values(self, address: Address) -> tuple[str, ...]:
        """*address* as the address columns hold it, in their order."""
        return (str(address),) if self.legacy.address_column else (address.local, address.domain)

    def _match(self, address: Address) -> sa.ColumnElement[bool]:
        dialect = self.db.dialect
        return sa.and_(*(caseless(column, dialect) == value for column, value in zip(
            self._address_columns(), self._address_values(address), strict=True)))

    def _select(self) -> sa.Select[Any]:
        columns: list[sa.ColumnElement[Any]] = [*self._address_columns(), self._password]
        if self.legacy.enabled_column:
            columns.append(self._t.c[self.legacy.enabled_column])
        return sa.select(*columns)

    @property
    def _width(self) -> int:
        return len(self._names)

    def _identity(self, row: Sequence[Any]) -> Address | None:
        """The account a row (address columns first) names, decided by our rule alone."""
        return stored_address(*row[:self._width])

    def _record(self, address: Address | str, row: Sequence[Any]) -> UserRecord:
        rest = row[self._width:]
        enabled = self._rule.matches(rest[1]) if self.legacy.enabled_column else True
        password = None if rest[0] is None else str(rest[0])
        return UserRecord(str(address), enabled, password)

    def _exact_keys(self, conn: Connection, address: Address) -> list[tuple[Any, ...]]:
        """The stored address values (as read) of the rows that are *address*."""
        query = (sa.select(*self._address_columns()).where(self._match(address))
                 .limit(MAX_CANDIDATES + 1))
        rows = _bounded(conn.execute(query).all(), address)
        return [tuple(r) for r in rows if self._identity(r) == address]

    def _exact_match(self, address: Address, key: tuple[Any, ...]) -> sa.ColumnElement[bool]:
        """The rows whose address columns hold exactly *key*: the indexed caseless match
        narrowed byte for byte, so a look-alike row is never written."""
        dialect = self.db.dialect
        return sa.and_(self._match(address), *(
            exactly(column, value, dialect)
            for column, value in zip(self._address_columns(), key, strict=True)))

    @property
    def login(self) -> Lookup:
        return self._login

    def lookup(self, address: Address) -> sa.Select[Any]:
        """The statement :meth:`find` sends for *address* (the AUTH path sends it with the
        throttle's count): what :mod:`~eximauthd.db.legacyindex` EXPLAINs."""
        return self._login.bound(address)

    def records(self, address: Address, rows: Sequence[Sequence[Any]],
                limit: int = 2) -> list[UserRecord]:
        return [self._record(address, r) for r in _bounded(rows, address)
                if self._identity(r) == address][:limit]

    def find(self, address: Address, limit: int = 2) -> list[UserRecord]:
        values = self._login.values(address)
        return self.records(address, self.db.run(
            "look up user", lambda conn: self._find.execute(conn, values).all()), limit)

    def find_many(self, addresses: Sequence[Address]) -> dict[str, list[UserRecord]]:
        wanted = set(addresses)
        found: dict[str, list[UserRecord]] = {}
        with self.db.read("look up users") as conn:
            for chunk in _chunks(list(addresses)):
                query = self._select().where(sa.or_(*(self._match(a) for a in chunk)))
                for r in conn.execute(query):
                    canonical = self._identity(r)
                    if canonical is None or canonical not in wanted:
                        continue  # a look-alike the collation matched
                    found.setdefault(str(canonical), []).append(self._record(canonical, r))
        return found

    def replace_password(self, address: Address, old: str, new: str) -> bool:
        def swap(conn: Connection) -> bool:
            keys = self._exact_keys(conn, address)
            if len(keys) != 1:
                # Two rows for one login: refuse to touch either rather than guess.
                return False
            query = (sa.update(self._t)
                     .where(self._exact_match(address, keys[0]),
                            exactly(self._password, old, self.db.dialect))
                     .values({self.legacy.password_column: new}))
            result = conn.execute(query)
            if result.rowcount > 1:
                # Byte-identical duplicate rows appeared meanwhile: still refuse.
                conn.rollback()
                return False
            return bool(result.rowcount == 1)

        return self.db.transact("rehash password", swap)

    def add(self, address: Address, password_hash: str) -> None:
        values: dict[str, Any] = {self.legacy.password_column: password_hash}
        values.update(zip(self._names, self._address_values(address), strict=True))
        if self.legacy.enabled_column:
            values[self.legacy.enabled_column] = self.legacy.enabled_value
        try:
            with self.db.write("add user") as conn:
                if self._exact_keys(conn, address):
                    raise UserExistsError(f"user already exists: {address}")
                conn.execute(sa.insert(self._t).values(values))
        except StorageError as exc:
            if is_duplicate(exc):
                # The table's unique index collates a look-alike row equal to this address.
                raise UserExistsError(f"cannot add {address}: the table's unique index holds "
                                      "a row its collation calls equal") from None
            raise

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
            key = _one(self._exact_keys(conn, address), address, "delete")
            count = conn.execute(sa.delete(self._t)
                                 .where(self._exact_match(address, key))).rowcount
            if count != 1:
                conn.rollback()
                raise UserNotFoundError(f"{count} rows match {address}; refusing to delete")

    def list(self) -> list[UserRecord]:
        query = self._select().order_by(*self._address_columns())
        with self.db.read("list users") as conn:
            # A row that names no account is listed as stored, so a look-alike stands out.
            return [self._record(self._identity(r) or "@".join(map(str, r[:self._width])), r)
                    for r in conn.execute(query)]

    def _update_one(self, address: Address, what: str, values: dict[str, Any]) -> None:
        with self.db.write(what) as conn:
            key = _one(self._exact_keys(conn, address), address, "change")
            count = conn.execute(sa.update(self._t).where(self._exact_match(address, key))
                                 .values(values)).rowcount
            if count != 1:
                conn.rollback()
                raise UserNotFoundError(f"{count} rows match {address}; refusing to change "
                                        "them")


def make_account_store(config: Config, db: Database) -> AccountStore:
    """The store the configuration asks for: legacy table if ``[legacy]`` is set, else our own."""
    if config.legacy.configured:
        return LegacyAccountStore(db, config.legacy)
    return OwnAccountStore(db)
