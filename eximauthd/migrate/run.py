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
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..core.hashing import Scheme, bare_scheme
from ..db.engine import Database, exactly
from ..errors import ColumnTooNarrowError, ConfigError, EximauthdError
from ..settings import LEGACY_PASSWORD_SCHEMES, Config, HashingConfig
from .candidates import (
    CHUNK,
    Batch,
    Candidate,
    Key,
    Tally,
    count_rows,
    hashing_pool,
    pages,
    sort_page,
    submit,
)
from .column import ColumnCheck, Target, inspect_target, widen
from .progress import Progress

__all__ = ["MigrationOptions", "MigrationReport", "migrate_passwords"]

_log = logging.getLogger("eximauthd.migrate")


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
    total, no_address = count_rows(db, target)
    if progress is not None:
        progress.start(None if options.limit else total, dry_run=options.dry_run)
    tally = Tally()
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


def _run(db: Database, target: Target, hashing: HashingConfig, bare: Scheme | None,
         options: MigrationOptions, tally: Tally, progress: Progress | None,
         before_write: Callable[[Sequence[Key]], None] | None) -> bool:
    """Read, hash and write every page; True when stopped by the limit."""
    pool = contextlib.nullcontext(None) if options.dry_run else hashing_pool(hashing, options.jobs)
    # Enough queued work that no worker waits while this process writes, and no more.
    ceiling = max(2 * options.batch_size, 4 * options.jobs * CHUNK)
    pending: deque[Batch] = deque()
    in_flight = 0
    limited = False
    with pool as executor:
        for rows in pages(db, target, options.batch_size):
            candidates, limited = sort_page(rows, target, tally, options.limit, bare)
            if executor is None:
                tally.migrated += len(candidates)
            else:
                pending.append(submit(executor, candidates, bare))
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


def _write(db: Database, target: Target, batch: Batch, tally: Tally,
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


def _swap_values(candidate: Candidate, new: str) -> dict[str, Any]:
    return {"swap_new": new, "swap_old": candidate.old,
            **{f"swap_key{i}": value for i, value in enumerate(candidate.key)}}
