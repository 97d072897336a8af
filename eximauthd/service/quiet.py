"""Repeated warnings, logged once and then counted: a dead database is not 86,000 lines a day.

The service's loops (rate-counter sync, cache revalidation, readiness) meet the same failure
every second while it lasts.  :class:`RepeatFilter`, on the log handler, lets the first such
line through, drops its repeats, and lets the next one through after a minute with how many were
dropped: ``... (repeated 59 times in the last minute)``.  Lines that differ only in their
numbers (an age in seconds, an error code) count as repeats; decision lines are never dropped.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RepeatFilter"]

_DIGITS = re.compile(r"\d+")


@dataclass
class _Seen:
    logged_at: float
    dropped: int = 0


class RepeatFilter(logging.Filter):
    """Let a warning through once per *window* seconds, with the count of those dropped.

    Only WARNING and above; a record carrying decision fields (one per request) always passes.
    At most *max_kinds* different lines are followed; beyond that, new kinds pass unfiltered.
    The count of a kind that stops repeating is told with its next occurrence, if any.
    """

    def __init__(self, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic,
                 max_kinds: int = 256) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._max_kinds = max_kinds
        self._seen: dict[tuple[str, int, str], _Seen] = {}
        # Records come from the event loop, the decision workers and the sync thread.
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or hasattr(record, "decision"):
            return True
        message = record.getMessage()
        key = (record.name, record.levelno, _DIGITS.sub("#", message))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                if len(self._seen) >= self._max_kinds:
                    self._forget_older_than(now - self.window)
                if len(self._seen) < self._max_kinds:
                    self._seen[key] = _Seen(now)
                return True
            if now - seen.logged_at < self.window:
                seen.dropped += 1
                return False
            dropped, since = seen.dropped, now - seen.logged_at
            seen.logged_at, seen.dropped = now, 0
        if dropped:
            record.msg = f"{message} (repeated {_times(dropped)} in the last {_span(since)})"
            record.args = None
        return True

    def _forget_older_than(self, when: float) -> None:
        for key in [k for k, s in self._seen.items() if s.logged_at < when]:
            del self._seen[key]


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _span(seconds: float) -> str:
    minutes = round(seconds / 60)
    return "minute" if minutes <= 1 else f"{minutes} minutes"
