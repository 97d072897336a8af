"""``eximauthd migrate-passwords``: hash every stored plaintext password with argon2id, in place.

Safe to stop at any instant, ``kill -9`` included, because of three rules:

1. A row is only ever written with an argon2id hash of the very value it held when it was read:
   the UPDATE is a compare-and-swap on the old value, byte for byte, so a password changed
   meanwhile (by its user, an admin, or eximauthd's rehash at login) is never overwritten.
2. Each batch is one transaction, so a killed run leaves every row holding its old value or a
   complete new hash, never anything in between.
3. argon2id rows are recognised and skipped, so a rerun never hashes a hash: it just carries on.

Only plaintext (bare, ``{PLAIN}``, ``{CLEARTEXT}``) is hashed now.  Other legacy hashes cannot be
turned into argon2id without the password; eximauthd upgrades them at each user's next login.
Empty and NULL passwords are never hashed: they are reported, loudly.  Neither are bare values
shaped like an unsalted hash under ``[legacy] password_scheme = "auto"``: hashing the hash would
make the hash the password forever.  They are reported by kind, so the admin can name the scheme.

The table's size never shows in memory: rows are read in key order (keyset pagination on the
primary key, or on the address columns of a table without one; never OFFSET), hashed by worker
processes that are sent only ``(key, plaintext)`` pairs, and written back by this process in read
order with a bounded number of rows in flight.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import argon2
import sqlalchemy as sa
from argon2.exceptions import InvalidHashError

from ..config import LEGACY_PASSWORD_SCHEMES, Config, HashingConfig
from ..core.hashing import Hasher, Scheme, bare_scheme, hash_shape, identify_scheme
from ..db.engine import Database, exactly, translate_errors
from ..errors import ColumnTooNarrowError, ConfigError, EximauthdError
from .column import ColumnCheck, Target, address_of, check_column, inspect_target, widen
from .progress import Progress

__all__ = [
    "ColumnCheck",
    "ColumnTooNarrowError",
    "Key",
    "MigrationOptions",
    "MigrationReport",
    "Progress",
    "check_column",
    "migrate_passwords",
]

_log = logging.getLogger("eximauthd.migrate")

Key = tuple[Any, ...]
"""A row's key: its primary key values, or its address column values when it has none."""

# Rows per task sent to a worker: enough to make the pickling negligible next to argon2id, few
# enough that every worker gets its share of a batch.
_CHUNK = 16
# How many addresses a warning names before it just counts.
_EXAMPLES = 20
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class MigrationOptions:
    """What ``migrate-passwords`` was asked to do."""

    dry_run: bool = False
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    batch_size: int = 200
    limit: int | None = None
    alter_column: bool = False

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("migrate-passwords: --jobs, --batch-size and --limit must be >= 1")


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """The counts of one run.  In a dry run ``migrated`` counts what would have been hashed."""

    column: ColumnCheck
    dry_run: bool
    widened: bool
    examined: int
    migrated: int
    already_argon2id: int
    legacy_kept: tuple[tuple[str, int], ...]
    empty: int
    empty_examples: tuple[str, ...]
    unknown: int
    unknown_examples: tuple[str, ...]
    changed: int
    no_address: int
    limit: int | None
    limited: bool
    seconds: float
    # Bare values shaped like a hash under password_scheme = "auto": (kind, count), kept, and
    # (kind, address) examples.
    hash_shaped: tuple[tuple[str, int], ...] = ()
    hash_shaped_examples: tuple[tuple[str, str], ...] = ()

    def summary(self) -> list[str]:
        """The final report, one line per count, for standard output."""
        column = self.column.describe()
        if self.widened:
            done = "would run" if self.dry_run else "widened:"
            column = f"column {self.column.table}.{self.column.column}: {done} {self.column.alter}"
        kept = sum(n for _, n in self.legacy_kept)
        shaped = sum(n for _, n in self.hash_shaped)
        schemes = ", ".join(f"{name} {n}" for name, n in self.legacy_kept)
        rows = [
            ("rows examined", self.examined, ""),
            ("to migrate (dry run)" if self.dry_run else "migrated to argon2id", self.migrated, ""),
            ("already argon2id", self.already_argon2id, ""),
            ("legacy hashes kept", kept,
             f"upgraded at each user's next login: {schemes}" if kept else ""),
            ("empty or NULL password", self.empty, "WARNING: see below" if self.empty else ""),
            ("unknown scheme", self.unknown, "never accepted at login" if self.unknown else ""),
            ("bare hash-shaped, kept", shaped, "WARNING: see below" if shaped else ""),
            ("changed meanwhile, skipped", self.changed, ""),
        ]
        lines = ["dry run: nothing was written"] if self.dry_run else []
        lines.append(column)
        lines += [f"{label:<28}{n:>9}  {note}".rstrip() for label, n, note in rows]
        if self.limited:
            lines.append(f"stopped at --limit {self.limit}: run again to continue")
        rate = self.examined / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"done in {self.seconds:.1f}s ({rate:.1f} rows/s)")
        return lines

    def warnings(self) -> list[str]:
        """What an operator must act on, for standard error."""
        found = []
        if self.empty:
            found.append(
                f"{self.empty} account(s) with an empty or NULL password "
                f"({_examples(self.empty_examples, self.empty)}): eximauthd refuses them, but the "
                "old Exim lookup condition accepted an empty password for them. Set a password "
                "(eximauthd user passwd ADDRESS) or delete them.")
        if self.unknown:
            found.append(
                f"{self.unknown} account(s) with a stored value in no scheme eximauthd knows "
                f"({_examples(self.unknown_examples, self.unknown)}): they cannot log in; see "
                "docs/migration.md.")
        for kind, count in self.hash_shaped:
            examples = tuple(a for k, a in self.hash_shaped_examples if k == kind)
            # Only some kinds have a password_scheme that verifies them; for the others the
            # way out is a new password, and the advice must not name a setting that fails.
            holds = (f"set [legacy] password_scheme = \"{kind}\"" if kind in LEGACY_PASSWORD_SCHEMES
                     else "no password_scheme verifies them: set new passwords (eximauthd user "
                          "passwd ADDRESS)")
            found.append(
                f"{kind}: {count} row(s) kept ({_examples(examples, count)}): a bare value "
                f"shaped like {kind} is never taken as plaintext, so these accounts cannot log "
                f"in. If the table holds {kind} hashes, {holds}; if it holds plaintext, set "
                "password_scheme = \"plain\"; see docs/passwords.md.")
        if self.no_address:
            found.append(f"{self.no_address} row(s) with NULL in an address column were not "
                         "examined: no one can log in to them, and their passwords stay as "
                         "they are.")
        return found


def _examples(examples: tuple[str, ...], count: int) -> str:
    return ", ".join(examples) + (", ..." if count > len(examples) else "")


# --- the run ------------------------------------------------------------------------------------

class _Kind(enum.Enum):
    PLAIN = "plain"
    ARGON2ID = "argon2id"
    LEGACY = "legacy"
    EMPTY = "empty"
    UNKNOWN = "unknown"
    HASH_SHAPED = "hash-shaped"


def _classify(stored: str | None, bare: Scheme | None = None) -> tuple[_Kind, Scheme, str]:
    """What to do with a stored value; the third item is the plaintext for ``PLAIN``, the kind
    of hash for ``HASH_SHAPED`` (a bare value that is not of the configured scheme, shaped
    like another).  *bare* is :func:`~eximauthd.hashing.bare_scheme`'s.  Pure."""
    if not stored:
        return _Kind.EMPTY, Scheme.UNKNOWN, ""
    scheme, body, label = identify_scheme(stored, bare)
    if scheme is Scheme.UNKNOWN and body == stored and hash_shape(stored) == label:
        return _Kind.HASH_SHAPED, scheme, label
    if scheme is Scheme.PLAIN:
        # "{PLAIN}" alone is an empty password too: hashing it would make "" a password.
        return (_Kind.PLAIN, scheme, body) if body else (_Kind.EMPTY, scheme, "")
    if scheme is Scheme.ARGON2ID:
        try:
            argon2.extract_parameters(body)
        except (InvalidHashError, ValueError):
            return _Kind.UNKNOWN, scheme, ""
        return _Kind.ARGON2ID, scheme, ""
    return (_Kind.UNKNOWN if scheme is Scheme.UNKNOWN else _Kind.LEGACY), scheme, ""


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A plaintext row to hash: its key and the exact value the swap must still find."""

    key: Key
    address: str
    old: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Batch:
    candidates: tuple[_Candidate, ...]
    futures: tuple[Future[list[tuple[Key, str]]], ...]

    def ready(self) -> bool:
        return all(f.done() for f in self.futures)


@dataclass(slots=True)
class _Tally:
    """Counts so far (the one mutable piece, owned by :func:`migrate_passwords`)."""

    examined: int = 0
    found: int = 0  # plaintext rows found, whether written yet or not
    migrated: int = 0
    argon2id: int = 0
    legacy: Counter[str] = field(default_factory=Counter)
    empty: list[str] = field(default_factory=list)
    empty_count: int = 0
    unknown: list[str] = field(default_factory=list)
    unknown_count: int = 0
    changed: int = 0
    shaped: Counter[str] = field(default_factory=Counter)
    shaped_examples: list[tuple[str, str]] = field(default_factory=list)


def migrate_passwords(config: Config, db: Database, options: MigrationOptions | None = None, *,
                      progress: Progress | None = None,
                      before_write: Callable[[Sequence[Key]], None] | None = None,
                      ) -> MigrationReport:
    """Hash every plaintext password of the configured accounts with argon2id.

    *before_write* runs after a batch is hashed and before it is written, with the batch's keys;
    it exists for tests, which change a password there to prove it is not overwritten.

    :raises ColumnTooNarrowError: the column cannot hold the hashes (and ``alter_column`` is off).
    :raises StorageError: the database failed; batches already committed stay committed.
    :raises HashingError: argon2 failed in a worker.
    """
    options = options or MigrationOptions()
    started = time.monotonic()
    target, check = inspect_target(db, config)
    if not check.fits and not options.alter_column:
        raise ColumnTooNarrowError(
            f"{check.describe()}; nothing was written. Widen it first (review the statement; it "
            f"may rebuild the table):\n    {check.alter};\nor run again with --alter-column to "
            "have eximauthd run exactly that.")
    if not check.fits and not options.dry_run:
        widen(db, check)
    total, no_address = _count(db, target)
    if progress is not None:
        progress.start(None if options.limit else total, dry_run=options.dry_run)
    tally = _Tally()
    bare = bare_scheme(config.legacy.password_scheme)
    limited = _run(db, target, config.hashing, bare, options, tally, progress, before_write)
    if progress is not None:
        progress.update(tally.examined, tally.migrated, final=True)
    return MigrationReport(
        column=check, dry_run=options.dry_run, widened=not check.fits, examined=tally.examined,
        migrated=tally.migrated, already_argon2id=tally.argon2id,
        legacy_kept=tuple(sorted(tally.legacy.items())), empty=tally.empty_count,
        empty_examples=tuple(tally.empty), unknown=tally.unknown_count,
        unknown_examples=tuple(tally.unknown), changed=tally.changed, no_address=no_address,
        limit=options.limit, limited=limited, seconds=time.monotonic() - started,
        hash_shaped=tuple(sorted(tally.shaped.items())),
        hash_shaped_examples=tuple(tally.shaped_examples),
    )


def _count(db: Database, target: Target) -> tuple[int, int]:
    missing = sa.or_(*(c.is_(None) for c in target.address))
    with translate_errors("count rows"), db.primary.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(target.table)).scalar_one()
        absent = conn.execute(sa.select(sa.func.count()).select_from(target.table)
                              .where(missing)).scalar_one()
    return int(total) - int(absent), int(absent)


def _run(db: Database, target: Target, hashing: HashingConfig, bare: Scheme | None,
         options: MigrationOptions, tally: _Tally, progress: Progress | None,
         before_write: Callable[[Sequence[Key]], None] | None) -> bool:
    """Read, hash and write every page; True when stopped by the limit."""
    pool = contextlib.nullcontext(None) if options.dry_run else _hashing_pool(hashing, options)
    # Enough queued work that no worker waits while this process writes, and no more.
    ceiling = max(2 * options.batch_size, 4 * options.jobs * _CHUNK)
    pending: deque[_Batch] = deque()
    in_flight = 0
    limited = False
    with pool as executor:
        for rows in _pages(db, target, options.batch_size):
            candidates, limited = _sort(rows, target, tally, options.limit, bare)
            if executor is None:
                tally.migrated += len(candidates)
            else:
                pending.append(_submit(executor, candidates, bare))
                in_flight += len(candidates)
            while pending and (in_flight > ceiling or pending[0].ready()):
                in_flight -= _write(db, target, pending.popleft(), tally, before_write)
            if progress is not None:
                progress.update(tally.examined - in_flight, tally.migrated)
            if limited:
                break
        while pending:
            in_flight -= _write(db, target, pending.popleft(), tally, before_write)
            if progress is not None:
                progress.update(tally.examined - in_flight, tally.migrated)
    return limited


def _pages(db: Database, target: Target, size: int) -> Iterator[Sequence[Sequence[Any]]]:
    """Rows with an address as ``(*key, *address, password)``, *size* at a time, in key order.

    Keyset pagination, never OFFSET: each page starts after the last key of the previous one.
    """
    key = target.key
    present = sa.and_(*(c.is_not(None) for c in target.address))
    last: Key | None = None
    while True:
        where = [present] if last is None else [present, _beyond(key, last)]
        with translate_errors("read passwords"), db.primary.connect() as conn:
            bounds = conn.execute(sa.select(*key).where(*where).order_by(*key).limit(size)).all()
            if not bounds:
                return
            edge = tuple(bounds[-1])
            # Read up to and including every row that sorts equal to the page's last key: a
            # collation that ties distinct values ('a' and 'A ' on MySQL) must not let one of
            # them fall between this page and the next one's `key > edge`.
            rows = conn.execute(sa.select(*key, *target.address, target.password)
                                .where(*where, _up_to(key, edge)).order_by(*key)).all()
        yield rows
        last = edge


def _beyond(columns: Sequence[sa.Column[Any]], values: Key) -> sa.ColumnElement[bool]:
    # (a, b) > (x, y) spelled out as a > x OR (a = x AND b > y), which every backend can
    # answer from an index on the columns.
    clause: sa.ColumnElement[bool] = columns[-1] > values[-1]
    for column, value in zip(columns[-2::-1], values[-2::-1], strict=True):
        clause = sa.or_(column > value, sa.and_(column == value, clause))
    return clause


def _up_to(columns: Sequence[sa.Column[Any]], values: Key) -> sa.ColumnElement[bool]:
    clause: sa.ColumnElement[bool] = columns[-1] <= values[-1]
    for column, value in zip(columns[-2::-1], values[-2::-1], strict=True):
        clause = sa.or_(column < value, sa.and_(column == value, clause))
    return clause


def _sort(rows: Sequence[Sequence[Any]], target: Target, tally: _Tally,
          limit: int | None, bare: Scheme | None) -> tuple[list[_Candidate], bool]:
    """Count a page's rows and pick the plaintext ones; True when the limit was reached."""
    width = len(target.key)
    candidates: list[_Candidate] = []
    for row in rows:
        if limit is not None and tally.found >= limit:
            return candidates, True
        key, address, stored = tuple(row[:width]), address_of(row[width:-1]), row[-1]
        tally.examined += 1
        kind, scheme, shape = _classify(stored, bare)
        match kind:
            case _Kind.PLAIN:
                tally.found += 1
                candidates.append(_Candidate(key, address, stored))
            case _Kind.ARGON2ID:
                tally.argon2id += 1
            case _Kind.LEGACY:
                tally.legacy[scheme.value] += 1
            case _Kind.EMPTY:
                tally.empty_count += 1
                _remember(tally.empty, address)
            case _Kind.UNKNOWN:
                tally.unknown_count += 1
                _remember(tally.unknown, address)
            case _Kind.HASH_SHAPED:
                tally.shaped[shape] += 1
                if tally.shaped[shape] <= _EXAMPLES:
                    tally.shaped_examples.append((shape, address))
    return candidates, limit is not None and tally.found >= limit


def _remember(examples: list[str], address: str) -> None:
    if len(examples) < _EXAMPLES:
        examples.append(address)


def _plaintext(candidate: _Candidate, bare: Scheme | None) -> str:
    # Classified again under the same password_scheme as when it was picked: under "plain" a
    # hash-shaped value is the plaintext, under "auto" it would never have been picked.
    kind, _, plaintext = _classify(candidate.old, bare)
    if kind is not _Kind.PLAIN:
        raise EximauthdError("migrate-passwords: a row picked as plaintext no longer is")
    return plaintext


def _submit(executor: ProcessPoolExecutor, candidates: list[_Candidate],
            bare: Scheme | None) -> _Batch:
    # Workers get the key and the plaintext only; the old value stays here for the swap.
    pairs = [(c.key, _plaintext(c, bare)) for c in candidates]
    futures = tuple(executor.submit(_hash_chunk, pairs[i:i + _CHUNK])
                    for i in range(0, len(pairs), _CHUNK))
    return _Batch(tuple(candidates), futures)


def _write(db: Database, target: Target, batch: _Batch, tally: _Tally,
           before_write: Callable[[Sequence[Key]], None] | None) -> int:
    """Swap a hashed batch in, in one transaction; return its number of rows."""
    if not batch.candidates:
        return 0
    hashed = [pair for future in batch.futures for pair in future.result()]
    if before_write is not None:
        before_write([key for key, _ in hashed])
    migrated = changed = 0
    swap = _swap_statement(target, db.dialect)
    with db.write("write argon2id hashes") as conn:
        if db.is_mysql:
            # Belt and braces for the width check: a server in a non-strict sql_mode would
            # silently truncate a hash that does not fit; strict mode makes it an error.
            conn.execute(sa.text(
                "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES')"))
        for candidate, (key, new) in zip(batch.candidates, hashed, strict=True):
            if key != candidate.key:
                raise EximauthdError("migrate-passwords: a hashing worker answered out of order")
            if conn.execute(swap, _swap_values(candidate, new)).rowcount:
                migrated += 1
            else:
                changed += 1
                _log.info("password of %s changed meanwhile; left as it is",
                          candidate.address)
    tally.migrated += migrated
    tally.changed += changed
    return len(batch.candidates)


def _swap_statement(target: Target, dialect: str) -> sa.Update:
    """``SET password = :new WHERE key = :key AND password = :old``, compared byte for byte.

    The comparison is :func:`eximauthd.db.engine.exactly`'s, with the old value as a parameter
    so that one statement serves every row (building one per row costs the parent CPU the
    workers need).
    """
    values: dict[str, Any] = {target.password.name: sa.bindparam("swap_new")}
    if target.stamp is not None:
        values[target.stamp.name] = sa.func.now()
    key = [column == sa.bindparam(f"swap_key{i}", type_=column.type)
           for i, column in enumerate(target.key)]
    old = exactly(target.password, sa.bindparam("swap_old"), dialect)
    return sa.update(target.table).where(*key, old).values(values)


def _swap_values(candidate: _Candidate, new: str) -> dict[str, Any]:
    return {"swap_new": new, "swap_old": candidate.old,
            **{f"swap_key{i}": value for i, value in enumerate(candidate.key)}}


# --- the hashing workers ------------------------------------------------------------------------

@contextlib.contextmanager
def _hashing_pool(hashing: HashingConfig, options: MigrationOptions
                  ) -> Iterator[ProcessPoolExecutor]:
    # spawn, not fork: a forked worker would share this process's database connections.
    executor = ProcessPoolExecutor(options.jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(hashing, os.getpid()))
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


_WORKER: dict[str, Hasher] = {}


def _start_worker(hashing: HashingConfig, parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent)
    _WORKER["hasher"] = Hasher(hashing)


def _die_with(parent: int) -> None:
    """Have Linux kill this worker when the migrating process dies, kill -9 included."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _hash_chunk(pairs: Sequence[tuple[Key, str]]) -> list[tuple[Key, str]]:
    hasher = _WORKER["hasher"]
    return [(key, hasher.hash(plaintext)) for key, plaintext in pairs]
