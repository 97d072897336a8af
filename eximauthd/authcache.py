"""The optional positive AUTH cache: skip argon2 for a pair verified moments ago.

An entry is keyed by HMAC(process secret, user ‖ password) and holds a digest of the stored
hash it was verified against.  A hit therefore still needs the account's current row (one
read), and only counts when that row is enabled and its stored value is unchanged: ``user
passwd`` or ``user disable`` (from any host, any tool) takes effect on the very next AUTH.
Only successes are stored; a failure is never cached, let alone as ``yes``.  Neither passwords
nor hashes are kept in memory, and the secret never leaves the process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["AuthCache"]


class AuthCache:
    """A bounded, thread-safe LRU of verified (user, password) digests with a TTL."""

    def __init__(self, ttl_seconds: float, max_entries: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._key = os.urandom(32)
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AuthCache(ttl={self.ttl}s, entries={len(self)}/{self.max_entries})"

    def __len__(self) -> int:
        return len(self._entries)

    def _slot(self, user: str, password: str) -> bytes:
        # Length-prefixed, so ("ab", "c") and ("a", "bc") can never share a slot.
        u = user.encode("utf-8", "surrogateescape")
        p = password.encode("utf-8", "surrogateescape")
        return hmac.new(self._key, len(u).to_bytes(4, "big") + u + p, hashlib.sha256).digest()

    @staticmethod
    def _stored(stored: str) -> bytes:
        return hashlib.sha256(stored.encode("utf-8", "surrogateescape")).digest()

    def hit(self, user: str, password: str, stored: str) -> bool:
        """True when this pair was verified against exactly *stored* within the TTL."""
        slot = self._slot(user, password)
        with self._lock:
            entry = self._entries.get(slot)
            if entry is None:
                return False
            digest, expires = entry
            if self._clock() >= expires or not hmac.compare_digest(digest, self._stored(stored)):
                del self._entries[slot]
                return False
            self._entries.move_to_end(slot)
            return True

    def put(self, user: str, password: str, stored: str) -> None:
        """Remember that *password* verified against *stored* for *user*."""
        slot = self._slot(user, password)
        entry = (self._stored(stored), self._clock() + self.ttl)
        with self._lock:
            self._entries[slot] = entry
            self._entries.move_to_end(slot)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
