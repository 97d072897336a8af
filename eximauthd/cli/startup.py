"""What ``eximauthd serve`` needs of the database before it starts, and waiting for it.

A service started on a database it cannot use would answer every AUTH ``defer`` and log the
same warning every second, for as long as nobody looks.  So ``serve`` refuses to start (exit 3,
one line naming the fix) unless told to wait: ``--wait-for-database``, for a host where the
database may come up after eximauthd.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType

from ..db import legacyindex, upgrade
from ..errors import EximauthdError, StorageError
from .app import State

__all__ = ["Stopped", "database_problem", "legacy_index_warning", "stoppable",
           "wait_for_database"]

_log = logging.getLogger("eximauthd.serve")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 15.0
LOG_EVERY_S = 60.0


def database_problem(state: State) -> str | None:
    """Why ``serve`` cannot start on the configured database yet, or None when it can.

    The embedded SQLite file is created and upgraded here, as it always was: it must work from
    an empty directory.  A MySQL/MariaDB schema is upgraded deliberately, by someone allowed to
    run DDL, so here it is only compared with the revision this eximauthd was built for.
    """
    head = upgrade.head_revision()
    try:
        db = state.db
        if db.dialect == "sqlite":
            upgrade.upgrade(db)
        current = upgrade.current_revision(db)
    except StorageError as exc:
        return str(exc)
    if current == head:
        return None
    if current is None:
        return "the database has no eximauthd tables: run `eximauthd db upgrade`"
    newer = upgrade.newer_than_known(current)
    if newer is not None:
        return newer
    return (f"the database schema is at revision {current}, this eximauthd needs {head}: "
            "run `eximauthd db upgrade`")


def legacy_index_warning(state: State) -> str | None:
    """The warning ``serve`` logs once at start-up (and ``migrate-passwords`` prints) when the
    ``[legacy]`` table's login lookup can use no index; None when it can or none is configured.

    Advice, not a reason to refuse: a table that cannot be inspected is named, and the service
    starts anyway (a lookup that fails there defers, as always).
    """
    try:
        return legacyindex.legacy_index_warning(state.db, state.config.legacy)
    except EximauthdError as exc:
        return f"cannot check the legacy table's index: {exc}"


def wait_for_database(problem: Callable[[], str | None], *,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once *problem* answers None, retrying with backoff and logging once a minute."""
    started = clock()
    delay = FIRST_DELAY_S
    logged_at: float | None = None
    attempts = 0
    while (found := problem()) is not None:
        attempts += 1
        now = clock()
        if logged_at is None:
            _log.warning("waiting for the database (--wait-for-database): %s", found)
            logged_at = now
        elif now - logged_at >= LOG_EVERY_S:
            _log.warning("still waiting for the database after %.0fs (%d attempts): %s",
                         now - started, attempts, found)
            logged_at = now
        sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)
    if attempts:
        _log.info("database ready after %.0fs", clock() - started)


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived while :func:`stoppable` was in force.

    A BaseException, as KeyboardInterrupt is: the signal may land anywhere, and code that
    catches Exception there (logging's handlers do, around every write) must not swallow it.
    """


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """Let SIGTERM and SIGINT end the block with :class:`Stopped` (asyncio owns them later)."""

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise Stopped

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
