"""The rows ``migrate-passwords`` reads, what it makes of each, and the workers that hash them.

Rows are read in key order, a page at a time (keyset pagination, never OFFSET), and sorted by
what they hold; each plaintext one becomes a :class:`Candidate`, sent in a :class:`Batch` to
worker processes that get only ``(key, plaintext)`` pairs.  :mod:`eximauthd.migrate.run` writes
the hashes back and reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import multiprocessing
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import argon2
import sqlalchemy as sa
from argon2.exceptions import InvalidHashError

from ..core.hashing import Hasher, Scheme, hash_shape, identify_scheme
from ..db.engine import Database, translate_errors
from ..errors import EximauthdError
from ..settings import HashingConfig
from .column import Target, address_of

__all__ = [
    "CHUNK",
    "Batch",
    "Candidate",
    "Key",
    "Kind",
    "Tally",
    "classify",
    "count_rows",
    "hashing_pool",
    "pages",
    "sort_page",
    "submit",
]

Key = tuple[Any, ...]
"""A row's key: its primary key values, or its address column values when it has none."""

# Rows per task sent to a worker: enough to make the pickling negligible next to argon2id, few
# enough that every worker gets its share of a batch.
CHUNK = 16
# How many addresses a warning names before it just counts.
_EXAMPLES = 20
_PR_SET_PDEATHSIG = 1


# --- what a stored value is ----------------------------------------------------------------------

class Kind(enum.Enum):
    PLAIN = "plain"
    ARGON2ID = "argon2id"
    LEGACY = "legacy"
    EMPTY = "empty"
    UNKNOWN = "unknown"
    HASH_SHAPED = "hash-shaped"


def classify(stored: str | None, bare: Scheme | None = None) -> tuple[Kind, Scheme, str]:
    """What to do with a stored value; the third item is the plaintext for ``PLAIN``, the kind
    of hash for ``HASH_SHAPED`` (a bare value that is not of the configured scheme, shaped
    like another).  *bare* is :func:`~eximauthd.core.hashing.bare_scheme`'s.  Pure."""
    if not stored:
        return Kind.EMPTY, Scheme.UNKNOWN, ""
    scheme, body, label = identify_scheme(stored, bare)
    if scheme is Scheme.UNKNOWN and body == stored and hash_shape(stored) == label:
        return Kind.HASH_SHAPED, scheme, label
    if scheme is Scheme.PLAIN:
        # "{PLAIN}" alone is an empty password too: hashing it would make "" a password.
        return (Kind.PLAIN, scheme, body) if body else (Kind.EMPTY, scheme, "")
    if scheme is Scheme.ARGON2ID:
        try:
            argon2.extract_parameters(body)
        except (InvalidHashError, ValueError):
            return Kind.UNKNOWN, scheme, ""
        return Kind.ARGON2ID, scheme, ""
    return (Kind.UNKNOWN if scheme is Scheme.UNKNOWN else Kind.LEGACY), scheme, ""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A plaintext row to hash: its key and the exact value the swap must still find."""

    key: Key
    address: str
    old: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Batch:
    """Candidates sent to the workers, and the futures of their hashes (in the same order)."""

    candidates: tuple[Candidate, ...]
    futures: tuple[Future[list[tuple[Key, str]]], ...]

    def ready(self) -> bool:
        return all(f.done() for f in self.futures)


@dataclass(slots=True)
class Tally:
    """Counts so far (the one mutable piece, owned by
    :func:`~eximauthd.migrate.run.migrate_passwords`)."""

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


# --- reading rows --------------------------------------------------------------------------------

def count_rows(db: Database, target: Target) -> tuple[int, int]:
    missing = sa.or_(*(c.is_(None) for c in target.address))
    with translate_errors("count rows", db.where), db.primary.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(target.table)).scalar_one()
        absent = conn.execute(sa.select(sa.func.count()).select_from(target.table)
                              .where(missing)).scalar_one()
    return int(total) - int(absent), int(absent)


def pages(db: Database, target: Target, size: int) -> Iterator[Sequence[Sequence[Any]]]:
    """Rows with an address as ``(*key, *address, password)``, *size* at a time, in key order.

    Keyset pagination, never OFFSET: each page starts after the last key of the previous one.
    """
    key = target.key
    present = sa.and_(*(c.is_not(None) for c in target.address))
    last: Key | None = None
    while True:
        where = [present] if last is None else [present, _beyond(key, last)]
        with translate_errors("read passwords", db.where), db.primary.connect() as conn:
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


def sort_page(rows: Sequence[Sequence[Any]], target: Target, tally: Tally,
              limit: int | None, bare: Scheme | None) -> tuple[list[Candidate], bool]:
    """Count a page's rows and pick the plaintext ones; True when the limit was reached."""
    width = len(target.key)
    candidates: list[Candidate] = []
    for row in rows:
        if limit is not None and tally.found >= limit:
            return candidates, True
        key, address, stored = tuple(row[:width]), address_of(row[width:-1]), row[-1]
        tally.examined += 1
        kind, scheme, shape = classify(stored, bare)
        match kind:
            case Kind.PLAIN:
                tally.found += 1
                candidates.append(Candidate(key, address, stored))
            case Kind.ARGON2ID:
                tally.argon2id += 1
            case Kind.LEGACY:
                tally.legacy[scheme.value] += 1
            case Kind.EMPTY:
                tally.empty_count += 1
                _remember(tally.empty, address)
            case Kind.UNKNOWN:
                tally.unknown_count += 1
                _remember(tally.unknown, address)
            case Kind.HASH_SHAPED:
                tally.shaped[shape] += 1
                if tally.shaped[shape] <= _EXAMPLES:
                    tally.shaped_examples.append((shape, address))
    return candidates, limit is not None and tally.found >= limit


def _remember(examples: list[str], address: str) -> None:
    if len(examples) < _EXAMPLES:
        examples.append(address)


def _plaintext(candidate: Candidate, bare: Scheme | None) -> str:
    # Classified again under the same password_scheme as when it was picked: under "plain" a
    # hash-shaped value is the plaintext, under "auto" it would never have been picked.
    kind, _, plaintext = classify(candidate.old, bare)
    if kind is not Kind.PLAIN:
        raise EximauthdError("migrate-passwords: a row picked as plaintext no longer is")
    return plaintext


def submit(executor: ProcessPoolExecutor, candidates: list[Candidate],
           bare: Scheme | None) -> Batch:
    # Workers get the key and the plaintext only; the old value stays here for the swap.
    pairs = [(c.key, _plaintext(c, bare)) for c in candidates]
    futures = tuple(executor.submit(_hash_chunk, pairs[i:i + CHUNK])
                    for i in range(0, len(pairs), CHUNK))
    return Batch(tuple(candidates), futures)


# --- the hashing workers ------------------------------------------------------------------------

@contextlib.contextmanager
def hashing_pool(hashing: HashingConfig, jobs: int) -> Iterator[ProcessPoolExecutor]:
    # spawn, not fork: a forked worker would share this process's database connections.
    executor = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
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
