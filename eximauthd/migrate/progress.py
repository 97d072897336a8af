"""A progress line for long runs: rewritten in place on a terminal, periodic lines otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Rows done, rate and ETA: one line rewritten in place on a terminal, else periodic lines."""

    def __init__(self, stream: TextIO, *, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = interval if interval is not None else (0.25 if self._tty else 10.0)
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self._total: int | None = None
        self._hashed = "hashed"
        self._width = 0

    def start(self, total: int | None, *, dry_run: bool = False) -> None:
        """Begin timing; *total* rows are to be examined (None: unknown, no ETA)."""
        self._start = self._last = self._clock()
        self._total = total
        self._hashed = "to hash" if dry_run else "hashed"

    def update(self, done: int, migrated: int, *, final: bool = False) -> None:
        now = self._clock()
        if not final and now - self._last < self._interval:
            return
        self._last = now
        line = _progress_line(done, migrated, self._total, now - self._start, self._hashed,
                              eta=not final)
        if self._tty:
            # Pad over the previous line's tail: the new one may be shorter.
            self._stream.write("\r" + line.ljust(self._width) + ("\n" if final else ""))
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


def _progress_line(done: int, migrated: int, total: int | None, elapsed: float, hashed: str,
                   *, eta: bool) -> str:
    """``1200/5000 rows (24%), 800 hashed, 85.3 rows/s, ETA 0:00:44``.  Pure."""
    rate = done / elapsed if elapsed > 0 else 0.0
    head = f"migrate-passwords: {done}"
    tail = ""
    if total:
        head += f"/{total} rows ({100 * done // total}%)"
        if eta and rate > 0:
            tail = f", ETA {_clock_time((total - done) / rate)}"
    else:
        head += " rows"
    return f"{head}, {migrated} {hashed}, {rate:.1f} rows/s{tail}"


def _clock_time(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
