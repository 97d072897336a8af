"""How long a failed AUTH must take, so that its duration tells nothing about the account.

An unknown user is checked against a dummy argon2id hash with the configured parameters, but a
real account may hold a costlier hash: bcrypt cost 12, SHA-crypt with 100,000 rounds, argon2id
from before a change of parameters.  A wrong password for such an account takes several times
as long as an unknown user, and that difference names the accounts that exist.  So every AUTH
``no`` that looked at an account is padded up to the longest password check seen lately.  The
padding is a sleep on the event loop: it holds no worker and costs no CPU.  Pure: the clock is
the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FailureFloor"]


@dataclass(slots=True)
class FailureFloor:
    """The longest password check of the last *window* seconds, kept in *buckets* slices.

    *cap* bounds the floor: the padding must leave the answer well inside Exim's readsocket
    timeout, whatever an outlier (a database stall) measured.
    """

    cap: float
    # Never less than this (the admin's setting): what a fresh process, which has seen no
    # costly check yet, pads to.  Without it the first probe of a costly account after a start
    # or a quiet window still stands out.
    minimum: float = 0.0
    window: float = 600.0
    buckets: int = 10
    _slices: dict[int, float] = field(default_factory=dict)

    def observe(self, seconds: float, now: float) -> None:
        """Remember a password check that took *seconds*, finished at *now*."""
        index = int(now // self._width)
        if seconds > self._slices.get(index, 0.0):
            self._slices[index] = seconds
        if len(self._slices) > self.buckets:
            oldest = index - self.buckets
            self._slices = {i: v for i, v in self._slices.items() if i > oldest}

    def floor(self, now: float) -> float:
        """The longest check of the window ending at *now*, at most *cap*."""
        oldest = int(now // self._width) - self.buckets
        longest = max((v for i, v in self._slices.items() if i > oldest), default=0.0)
        return min(max(longest, self.minimum), self.cap)

    def padding(self, elapsed: float, now: float) -> float:
        """How much longer a failure that took *elapsed* must wait (0 when none)."""
        return max(0.0, self.floor(now) - elapsed)

    @property
    def _width(self) -> float:
        return self.window / self.buckets
