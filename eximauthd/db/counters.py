"""Storage for the abuse defenses: failure counters, known networks, rate counters, user limits.

Each counter update is one atomic statement (``INSERT ... ON DUPLICATE KEY UPDATE`` on
MySQL/MariaDB, ``INSERT ... ON CONFLICT DO UPDATE`` on SQLite), so instances sharing the
database never lose each other's counts and never race on a first insert.  Everything goes to
the primary: a replica's lag would let a locked-out client through.

Addresses here are canonical (:func:`eximauthd.core.addresses.parse_address`), and every read or
delete by address is byte for byte (:func:`eximauthd.db.engine.exactly`, or a filter in Python):
a table still in a caseless collation must not hand one user's counters, known networks or
limits to a look-alike (``boss@muller.test`` / ``boss@müller.test``).
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Connection

from ..core.limits import Limit, RateKey
from ..errors import StorageError
from . import tables
from .engine import Database, exactly
from .prepared import Lookup, Prepared

__all__ = [
    "AttemptStore",
    "FailureRow",
    "KnownNetworkStore",
    "LimitStore",
    "RateKey",
    "RateStore",
    "Reserved",
    "Subject",
    "utcnow",
]

Subject = tuple[str, str]  # (scope, subject): ("ip", "192.0.2.1/32") or ("user", "a@b.example")


def utcnow() -> dt.datetime:
    """Naive UTC, second precision: what a DATETIME column stores on both backends."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _upsert(db: Database, table: sa.Table, keys: Sequence[str],
            update: Any) -> Any:
    """An INSERT that updates the row with the same *keys* instead; *update* maps
    (table, inserted-values) to the ordered ``(column, expression)`` assignments."""
    if db.is_mysql:
        stmt = mysql.insert(table)
        # A list keeps the order: MySQL evaluates the assignments left to right, each one
        # seeing the columns already assigned.
        return stmt.on_duplicate_key_update(
            [(column.name, value) for column, value in update(table, stmt.inserted)])
    stmt_lite = sqlite.insert(table)
    return stmt_lite.on_conflict_do_update(
        index_elements=list(keys),
        set_={column.name: value for column, value in update(table, stmt_lite.excluded)})


@dataclass(frozen=True, slots=True)
class FailureRow:
    """A subject's password checks in the window: how many, the first and the last."""

    scope: str
    subject: str
    failures: int
    window_start: dt.datetime
    last_failure_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Reserved:
    """What :meth:`AttemptStore.reserve` found for one subject."""

    count: int  # distinct passwords checked (or being checked) in the window, this one included
    mine: bool  # this request added (or renewed) the row, so it may take it back


# MySQL/MariaDB: InnoDB chose this transaction as a deadlock victim, or Galera's certification
# refused it (two nodes wrote the same row at once; the same code).  Either way it was rolled
# back whole, so trying it again is safe.
_MYSQL_DEADLOCK = 1213
_RESERVE_TRIES = 3
# The sizes of release_many's statements, in (scope, subject, tag) keys: a success has two
# (its network and its user), so 64 successes at most per statement.
_RELEASE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
_T = TypeVar("_T")


def _is_deadlock(exc: StorageError) -> bool:
    orig = getattr(exc.__context__, "orig", None)
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] == _MYSQL_DEADLOCK


def _retrying(work: Callable[[], _T]) -> _T:
    """Run the transaction *work* again after a deadlock or a certification conflict, a few
    times at most; the last failure is raised (its caller defers or keeps its counts)."""
    for attempt in range(_RESERVE_TRIES):
        try:
            return work()
        except StorageError as exc:
            if not _is_deadlock(exc) or attempt == _RESERVE_TRIES - 1:
                raise
            # A little jitter: the winner commits meanwhile, the losers do not collide again.
            time.sleep(random.uniform(0.001, 0.01 * (attempt + 1)))  # noqa: S311
    raise AssertionError("unreachable")


class AttemptStore:
    """``eximauthd_auth_attempts``: password checks per client network and per user.

    A row is one distinct (subject, password digest) in the window.  :meth:`reserve` adds the
    request's rows and commits them *before* it counts, so of any number of concurrent requests
    (on any number of instances) the one whose row was committed k-th sees a count of at least
    k: at most ``limit`` of them can see a count within the limit.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._t = tables.auth_attempts
        # The request path's statements, built once each (see :mod:`.prepared`).
        self._prepared: dict[tuple[Any, ...], Prepared] = {}

    def __repr__(self) -> str:
        return f"AttemptStore({self.db!r})"

    def _statement(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Prepared:
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepared[key] = Prepared(build())
        return prepared

    def reserve(self, subjects: Sequence[Subject], tag: str, nonce: str, now: dt.datetime,
                since: dt.datetime) -> dict[Subject, Reserved]:
        """Reserve a check of *tag* for each subject; return every subject's count.

        A row of the same *tag* still in the window is shared (a repeat counts once); one from
        an earlier window is renewed, as if new.  A deadlock is retried, a few times at most.
        """
        return self.reserve_and_read(subjects, tag, nonce, now, since)[0]

    def reserve_and_read(self, subjects: Sequence[Subject], tag: str, nonce: str,
                         now: dt.datetime, since: dt.datetime, also: Lookup | None = None,
                         also_values: Mapping[str, Any] | None = None,
                         ) -> tuple[dict[Subject, Reserved], list[tuple[Any, ...]]]:
        """:meth:`reserve`, and the rows of *also* (with *also_values*) read by the statement
        that counts.

        Two statements in all: the reserving write, then one read of the counts and of *also*
        (the account's row: a request needs it next, and it costs no round trip of its own).
        """
        if not subjects:
            return {}, []
        reserve = self._reserving(len(subjects))
        # One multi-row statement (not executemany: PyMySQL cannot batch one whose UPDATE part
        # has parameters), committed by itself (autocommit): the rows must be committed before
        # anyone counts them.  Idempotent (a repeat shares the rows), so a lost connection is
        # retried.  Its rows in the subjects' order: the same lock order on every instance.
        added = _subject_values(sorted(subjects), tag=tag, nonce=nonce, now=now, since=since)
        _retrying(lambda: self.db.run("reserve password check",
                                      lambda conn: reserve.execute(conn, added), primary=True))
        count = self._counting(len(subjects), also)
        values = _subject_values(subjects, tag=tag, nonce=nonce, since=since,
                                 **((also_values or {}) if also is not None else {}))
        # The primary, a statement of its own (autocommit): it sees every row committed so
        # far, ours included.
        read = self.db.run("count password checks",
                           lambda conn: count.execute(conn, values).all(), primary=True)
        width = 2 * len(subjects)
        found: dict[Subject, Reserved] = {}
        for i, key in enumerate(subjects):
            n, m = int(read[0][2 * i]), bool(read[0][2 * i + 1])
            # A row pruned between the two statements: count it as there (never fewer than one).
            found[key] = Reserved(n, m) if n else Reserved(1, True)
        extra_rows = [tuple(r[width:]) for r in read
                      if any(value is not None for value in r[width:])]
        return found, extra_rows

    def _reserving(self, n: int) -> Prepared:
        return self._statement(("reserve", n), lambda: self._reserve_statement(n))

    def _reserve_statement(self, n: int) -> Any:
        def update(t: sa.Table, new: Any) -> list[tuple[Any, Any]]:
            expired = t.c.attempted_at < sa.bindparam("since")
            # nonce first: MySQL assigns left to right, and it must see the old attempted_at.
            return [(t.c.nonce, sa.case((expired, new.nonce), else_=t.c.nonce)),
                    (t.c.attempted_at, sa.case((expired, new.attempted_at),
                                               else_=t.c.attempted_at))]

        stmt = _upsert(self.db, self._t, ("scope", "subject", "tag"), update)
        rows: list[dict[str, Any]] = [
            {"scope": sa.bindparam(f"scope{i}"), "subject": sa.bindparam(f"subject{i}"),
             "tag": sa.bindparam("tag"), "nonce": sa.bindparam("nonce"),
             "attempted_at": sa.bindparam("now")} for i in range(n)]
        return stmt.values(rows)

    def _counting(self, n: int, also: Lookup | None) -> Prepared:
        return self._statement(("count", n, None if also is None else id(also.statement)),
                               lambda: self._count_statement(n, also))

    def _count_statement(self, n: int, also: Lookup | None) -> sa.Select[Any]:
        t = self._t
        tag: sa.BindParameter[str] = sa.bindparam("tag")
        nonce: sa.BindParameter[str] = sa.bindparam("nonce")
        since: sa.BindParameter[dt.datetime] = sa.bindparam("since")
        mine = sa.func.coalesce(sa.func.max(sa.case(
            (sa.and_(t.c.tag == tag, t.c.nonce == nonce), 1), else_=0)), 0)
        columns: list[Any] = []
        for i in range(n):
            rows = sa.and_(t.c.scope == sa.bindparam(f"scope{i}"),
                           t.c.subject == sa.bindparam(f"subject{i}"), t.c.attempted_at >= since)
            columns += [sa.select(sa.func.count()).where(rows).scalar_subquery().label(f"n{i}"),
                        sa.select(mine).where(rows).scalar_subquery().label(f"m{i}")]
        query: sa.Select[Any] = sa.select(*columns)
        if also is not None:
            # One row of counts, joined to the rows of *also* (none: one row of NULLs).
            counts, extra = query.subquery("counts"), also.statement.subquery("also")
            query = sa.select(counts, extra).select_from(counts.outerjoin(extra, sa.true()))
        return query

    def release(self, subjects: Sequence[Subject], tag: str, nonce: str | None = None) -> None:
        """Delete the subjects' rows of *tag* (only those this *nonce* reserved, if given)."""
        if not subjects:
            return
        t = self._t

        def build() -> Any:
            query = sa.delete(t).where(sa.or_(*(
                sa.and_(t.c.scope == sa.bindparam(f"scope{i}"),
                        t.c.subject == sa.bindparam(f"subject{i}"))
                for i in range(len(subjects)))), t.c.tag == sa.bindparam("tag"))
            return query if nonce is None else query.where(t.c.nonce == sa.bindparam("nonce"))

        prepared = self._statement(("release", len(subjects), nonce is not None), build)
        values = _subject_values(subjects, tag=tag, **({} if nonce is None else {"nonce": nonce}))
        self.db.run("release password check", lambda conn: prepared.execute(conn, values),
                    primary=True)

    def release_many(self, held: Sequence[tuple[Sequence[Subject], str]]) -> None:
        """Delete the rows of each (subjects, tag) in *held*: the successes of a short while,
        taken back together, in one statement per :data:`_RELEASE_SIZES` rows at most."""
        keys = sorted({(scope, subject, tag) for subjects, tag in held
                       for scope, subject in subjects})
        while keys:
            size = next(n for n in _RELEASE_SIZES if n >= min(len(keys), _RELEASE_SIZES[-1]))
            chunk, keys = keys[:size], keys[size:]
            # Padded with its last key to one of a few sizes: a handful of statements to
            # compile, and a repeated key deletes nothing twice.
            chunk += [chunk[-1]] * (size - len(chunk))
            prepared = self._releasing(size)
            values: dict[str, Any] = {}
            for i, (scope, subject, tag) in enumerate(chunk):
                values[f"scope{i}"], values[f"subject{i}"], values[f"tag{i}"] = scope, subject, tag
            # Idempotent: retried after a lost connection, a deadlock or a certification
            # conflict with another instance's reservation.
            send = functools.partial(prepared.execute, values=values)
            _retrying(functools.partial(self.db.run, "release password checks", send,
                                        primary=True))

    def _releasing(self, size: int) -> Prepared:
        t = self._t
        return self._statement(("release many", size), lambda: sa.delete(t).where(sa.or_(*(
            sa.and_(t.c.scope == sa.bindparam(f"scope{i}"),
                    t.c.subject == sa.bindparam(f"subject{i}"),
                    t.c.tag == sa.bindparam(f"tag{i}"))
            for i in range(size)))))

    def list(self, since: dt.datetime) -> list[FailureRow]:
        t = self._t
        count = sa.func.count().label("n")
        query = (sa.select(t.c.scope, t.c.subject, count,
                           sa.func.min(t.c.attempted_at).label("first"),
                           sa.func.max(t.c.attempted_at).label("last"))
                 .where(t.c.attempted_at >= since)
                 .group_by(t.c.scope, t.c.subject)
                 .order_by(count.desc(), t.c.scope, t.c.subject))
        with self.db.read("list auth failures") as conn:
            return [FailureRow(r.scope, r.subject, int(r.n), r.first, r.last)
                    for r in conn.execute(query)]

    def reset(self, scope: str | None = None, subject: str | None = None) -> int:
        """Delete the rows of all subjects, one scope, or one subject; return how many."""
        t = self._t
        query = sa.delete(t)
        if scope is not None:
            query = query.where(t.c.scope == scope)
        if subject is not None:
            query = query.where(t.c.subject == subject,
                                exactly(t.c.subject, subject, self.db.dialect))
        with self.db.write("reset auth failures") as conn:
            return int(conn.execute(query).rowcount)

    def prune(self, before: dt.datetime) -> int:
        """Delete rows older than the window (they count for nothing)."""
        t = self._t
        with self.db.write("prune auth failures") as conn:
            return int(conn.execute(sa.delete(t).where(t.c.attempted_at < before)).rowcount)


def _subject_values(subjects: Sequence[Subject], **values: Any) -> dict[str, Any]:
    """*values* and each subject's ``scope{i}``/``subject{i}``, as the statements name them."""
    for i, (scope, subject) in enumerate(subjects):
        values[f"scope{i}"], values[f"subject{i}"] = scope, subject
    return values


class KnownNetworkStore:
    """``eximauthd_known_clients``: networks each user recently logged in from."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._t = tables.known_clients

    def is_known(self, address: str, network: str, since: dt.datetime) -> bool:
        t = self._t
        query = sa.select(t.c.id).where(t.c.address == address,
                                        exactly(t.c.address, address, self.db.dialect),
                                        t.c.network == network,
                                        t.c.last_success_at >= since).limit(1)
        return self.db.run("read known networks", lambda conn: conn.execute(query).first(),
                           primary=True) is not None

    def touch(self, address: str, network: str, now: dt.datetime) -> None:
        stmt = _upsert(self.db, self._t, ("address", "network"),
                       lambda t, new: [(t.c.last_success_at, new.last_success_at)])
        _retrying(lambda: self.db.run("record known network", lambda conn: conn.execute(
            stmt, {"address": address, "network": network, "last_success_at": now}),
            primary=True))

    def prune(self, before: dt.datetime) -> int:
        t = self._t
        with self.db.write("prune known networks") as conn:
            return int(conn.execute(sa.delete(t).where(t.c.last_success_at < before)).rowcount)


class RateStore:
    """``eximauthd_rate_counters``: outbound counts per user, kind and fixed window."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._t = tables.rate_counters

    def add_and_read(self, deltas: dict[RateKey, int], addresses: Iterable[str],
                     now: int) -> dict[RateKey, int]:
        """Add *deltas* in one transaction, then read every live counter of *addresses*.

        *now* is epoch seconds; a counter is live until its ``expires_at``.  A deadlock (two
        instances adding to the same user's rows on two Galera nodes) is retried.
        """
        return _retrying(lambda: self._add_and_read(deltas, addresses, now))

    def _add_and_read(self, deltas: dict[RateKey, int], addresses: Iterable[str],
                      now: int) -> dict[RateKey, int]:
        t = self._t
        wanted = sorted(set(addresses))
        exact = set(wanted)
        def work(conn: Connection) -> dict[RateKey, int]:
            if deltas:
                stmt = _upsert(self.db, t, ("address", "kind", "window_seconds", "bucket"),
                               lambda t, new: [(t.c.count, t.c.count + new.count)])
                conn.execute(stmt, [
                    {"address": a, "kind": k, "window_seconds": w, "bucket": b, "count": n,
                     "expires_at": (b + 2) * w}
                    for (a, k, w, b), n in sorted(deltas.items())])
            found: dict[RateKey, int] = {}
            # IN lists stay short: a few hundred addresses per statement.
            for i in range(0, len(wanted), 500):
                query = sa.select(t.c.address, t.c.kind, t.c.window_seconds, t.c.bucket,
                                  t.c.count.label("n")).where(t.c.address.in_(wanted[i:i + 500]),
                                                   t.c.expires_at > now)
                for r in conn.execute(query):
                    if r.address not in exact:
                        continue  # a look-alike the collation matched
                    found[(r.address, r.kind, int(r.window_seconds), int(r.bucket))] = int(r.n)
            return found

        # Retried from the start when the connection was lost before the COMMIT: the counts
        # were not added then, and are added once.
        return self.db.transact("update rate counters", work)

    def live(self, now: int) -> dict[RateKey, int]:
        t = self._t
        query = sa.select(t.c.address, t.c.kind, t.c.window_seconds, t.c.bucket,
                          t.c.count.label("n")).where(t.c.expires_at > now)
        with self.db.read("list rate counters") as conn:
            return {(r.address, r.kind, int(r.window_seconds), int(r.bucket)): int(r.n)
                    for r in conn.execute(query)}

    def reset(self, address: str | None = None) -> int:
        t = self._t
        query = sa.delete(t) if address is None else sa.delete(t).where(
            t.c.address == address, exactly(t.c.address, address, self.db.dialect))
        with self.db.write("reset rate counters") as conn:
            return int(conn.execute(query).rowcount)

    def prune(self, now: int) -> int:
        t = self._t
        with self.db.write("prune rate counters") as conn:
            return int(conn.execute(sa.delete(t).where(t.c.expires_at <= now)).rowcount)


class LimitStore:
    """``eximauthd_user_limits``: per-user limits replacing the configured ones of a kind.

    For a kind, a user has no rows (the configured limits apply), one row with window 0 (no
    limit of that kind), or its own limits.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._t = tables.user_limits

    def all(self) -> dict[str, dict[str, tuple[Limit, ...]]]:
        """Every override: address → kind → limits (empty tuple: unlimited)."""
        t = self._t
        query = sa.select(t.c.address, t.c.kind, t.c.window_seconds, t.c.maximum).order_by(
            t.c.address, t.c.kind, t.c.window_seconds)
        found: dict[str, dict[str, list[Limit]]] = {}
        for r in self.db.run("read user limits", lambda conn: conn.execute(query).all(),
                             primary=True):
            limits = found.setdefault(r.address, {}).setdefault(r.kind, [])
            if r.window_seconds > 0:
                limits.append(Limit(int(r.window_seconds), int(r.maximum)))
        return {a: {k: tuple(v) for k, v in kinds.items()} for a, kinds in found.items()}

    def set(self, address: str, kind: str, limits: Sequence[Limit] | None) -> None:
        """Replace *address*'s limits of *kind*: *limits*, () for unlimited, None for default."""
        t = self._t
        with self.db.write("set user limits") as conn:
            conn.execute(sa.delete(t).where(t.c.address == address,
                                            exactly(t.c.address, address, self.db.dialect),
                                            t.c.kind == kind))
            if limits is None:
                return
            rows = [{"address": address, "kind": kind, "window_seconds": limit.window_seconds,
                     "maximum": limit.maximum} for limit in limits]
            conn.execute(sa.insert(t), rows or [{"address": address, "kind": kind,
                                                 "window_seconds": 0, "maximum": 0}])
