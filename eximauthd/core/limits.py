"""Outbound limits as written in configuration and on the command line: ``COUNT/WINDOW``.  Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["KINDS", "Limit", "RateKey", "format_window", "parse_limit", "parse_limits"]

KINDS = ("recipients", "messages")
# One counter: (address, kind, window_seconds, bucket).
RateKey = tuple[str, str, int, int]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SPEC = re.compile(r"([0-9]{1,9})/([0-9]{0,6})([smhd])")
# A day is the longest window worth a fixed-window counter; longer ones belong to accounting.
_MAX_WINDOW = 7 * 86400


@dataclass(frozen=True, slots=True, order=True)
class Limit:
    """At most ``maximum`` of a kind in any ``window_seconds``."""

    window_seconds: int
    maximum: int

    def __str__(self) -> str:
        return f"{self.maximum}/{format_window(self.window_seconds)}"


def format_window(seconds: int) -> str:
    """``3600`` → ``1h``; the largest unit that divides it."""
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def parse_limit(spec: str) -> Limit:
    """``"100/1h"`` → ``Limit(3600, 100)``; ``"/h"`` means one unit.

    :raises ConfigError: not ``COUNT/WINDOW``, a count of 0, or a window outside 1s..7d.
    """
    match = _SPEC.fullmatch(spec.strip().lower())
    if match is None:
        raise ConfigError(f"{spec[:32]!r}: expected COUNT/WINDOW such as 100/1h (units s m h d)")
    count, number, unit = match.groups()
    seconds = int(number or "1") * _UNITS[unit]
    if not 1 <= seconds <= _MAX_WINDOW:
        raise ConfigError(f"{spec[:32]!r}: the window must be between 1s and 7d")
    if int(count) < 1:
        raise ConfigError(f"{spec[:32]!r}: the count must be at least 1")
    return Limit(seconds, int(count))


def parse_limits(specs: tuple[str, ...] | list[str]) -> tuple[Limit, ...]:
    """Several limits, one per window, sorted by window.

    :raises ConfigError: a bad spec, or two limits for one window.
    """
    limits = sorted(parse_limit(spec) for spec in specs)
    windows = [limit.window_seconds for limit in limits]
    if len(set(windows)) != len(windows):
        raise ConfigError("two limits for the same window")
    return tuple(limits)
