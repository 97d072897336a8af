"""Send-as grants remembered for a few seconds, so that a granted sender costs no lookup.

A submission host asks the relay rule at every recipient, and a login that sends as a shared
address (``sales@``, a partner domain) needs its grants each time: one statement per recipient
and, in the service, a worker thread's hop.  This keeps each login's grants for
``[policy] grant_cache_seconds``, and only ever to say **yes**:

- a sender the remembered grants allow is allowed (a grant removed elsewhere still counts until
  the entry expires: at most that many seconds);
- a sender they do not allow is looked up again before it is refused, so a grant just added
  works at once and no refusal ever rests on a remembered answer;
- ``FORGET`` of the login (``eximauthd grant remove`` and ``user disable|delete|passwd`` send
  it to the local service) drops the entry, and a lookup that began before the FORGET does not
  put back what it read.

Thread-safe: the event loop reads it, worker threads fill it.  The clock is the caller's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["GrantCache"]


class GrantCache:
    """Each login's grants (as stored: addresses and ``@domain``) for *ttl* seconds, at most
    *max_entries* logins; a *ttl* of 0 remembers nothing."""

    def __init__(self, ttl: float, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        # login -> (expiry, grants); insertion order is age, so the first entry is the oldest.
        self._entries: dict[str, tuple[float, tuple[str, ...]]] = {}
        # Bumped by forget(); put() stores only under the number its lookup started with.
        self._forgotten = 0

    def __repr__(self) -> str:
        return f"GrantCache(ttl={self.ttl:g}, entries={len(self._entries)})"

    def get(self, login: str) -> tuple[str, ...] | None:
        """The grants of *login* read less than *ttl* seconds ago, else None."""
        entry = self._entries.get(login)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            with self._lock:
                if self._entries.get(login) is entry:
                    del self._entries[login]
            return None
        return entry[1]

    def generation(self) -> int:
        """Take before the lookup whose result goes to :meth:`put`."""
        return self._forgotten

    def put(self, login: str, grants: tuple[str, ...], generation: int) -> None:
        """Remember *grants* of *login*, unless a :meth:`forget` came since *generation*."""
        # No room at all (max_entries 0) is "remember nothing", as a ttl of 0 is: the eviction
        # below would otherwise take the first entry of an empty dict (StopIteration).
        if self.ttl <= 0 or self.max_entries <= 0:
            return
        with self._lock:
            if generation != self._forgotten:
                return
            self._entries.pop(login, None)
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[login] = (self._clock() + self.ttl, grants)

    def forget(self, login: str) -> None:
        """Drop *login*'s grants; a lookup under way does not store them back."""
        with self._lock:
            self._forgotten += 1
            self._entries.pop(login, None)
