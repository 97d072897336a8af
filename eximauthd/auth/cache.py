"""The optional positive AUTH cache: answer a repeat of a recent success without argon2 or I/O.

An entry is keyed by HMAC(process key, user ‖ password ‖ client network) and holds a digest of
the stored hash the password was verified against.  A hit costs no database read, so the
entry must be dropped when the account changes:

- ``eximauthd user passwd|disable|delete`` tells the local service at once (``FORGET`` on the
  socket), so the very next AUTH with the old password is checked afresh and refused;
- every ``revalidate_seconds`` the service reads the current row of every cached user in a
  few batched queries and drops the entries whose stored hash changed or whose account was
  disabled or removed, whoever changed it (another host, a web panel writing the table).

Only successes are stored; a failure is never cached.  The client's network is part of the key,
so an entry made from the owner's network is never a way around throttling from elsewhere.
Neither passwords nor hashes are kept in memory, and the key never leaves the process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

__all__ = ["AuthCache", "Current"]

Current = tuple[str | None, bool]  # the stored value now, and whether the account is enabled


class AuthCache:
    """A bounded, thread-safe LRU of verified (user, password, network) digests with a TTL."""

    def __init__(self, ttl_seconds: float, max_entries: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._key = os.urandom(32)
        self._clock = clock
        # slot -> (user, digest of the stored hash, expiry)
        self._entries: OrderedDict[bytes, tuple[str, bytes, float]] = OrderedDict()
        self._by_user: dict[str, set[bytes]] = {}
        # Bumped by forget(): a put() that read the account before a FORGET must not store
        # what it read (the old password would be cached again after the change).
        self._generation: dict[str, int] = {}
        self._epoch = 0  # bumped when _generation is trimmed: in-flight puts are then refused
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AuthCache(ttl={self.ttl}s, entries={len(self)}/{self.max_entries})"

    def __len__(self) -> int:
        return len(self._entries)

    def _slot(self, user: str, password: str, network: str | None) -> bytes:
        # Length-prefixed, so ("ab", "c") and ("a", "bc") can never share a slot.
        parts = [p.encode("utf-8", "surrogateescape") for p in (user, password, network or "")]
        message = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
        # The one-shot form: the same HMAC without building an hmac object.
        return hmac.digest(self._key, message, "sha256")

    @staticmethod
    def _digest(stored: str) -> bytes:
        return hashlib.sha256(stored.encode("utf-8", "surrogateescape")).digest()

    def hit(self, user: str, password: str, network: str | None) -> bool:
        """True when this user logged in with this password from this client *network* (None:
        no client address) within the TTL and nothing about the account has changed since
        (that this process knows)."""
        slot = self._slot(user, password, network)
        with self._lock:
            entry = self._entries.get(slot)
            if entry is None:
                return False
            if self._clock() >= entry[2]:
                self._drop(slot)
                return False
            self._entries.move_to_end(slot)
            return True

    def generation(self, user: str) -> tuple[int, int]:
        """Take this before reading the account; hand it to :meth:`put`."""
        with self._lock:
            return self._epoch, self._generation.get(user, 0)

    def put(self, user: str, password: str, network: str | None, stored: str,
            generation: tuple[int, int]) -> None:
        """Remember that *password* verified against *stored* for *user* from client
        *network*, unless the user was forgotten since *generation* was taken."""
        slot = self._slot(user, password, network)
        with self._lock:
            if (self._epoch, self._generation.get(user, 0)) != generation:
                return
            self._drop(slot)
            self._entries[slot] = (user, self._digest(stored), self._clock() + self.ttl)
            self._by_user.setdefault(user, set()).add(slot)
            while len(self._entries) > self.max_entries:
                self._drop(next(iter(self._entries)))

    def forget(self, user: str) -> int:
        """Drop every entry of *user*; return how many."""
        with self._lock:
            self._generation[user] = self._generation.get(user, 0) + 1
            if len(self._generation) > 4 * self.max_entries:
                # Bounded memory; the new epoch refuses every put that started before.
                self._generation = {}
                self._epoch += 1
            slots = list(self._by_user.get(user, ()))
            for slot in slots:
                self._drop(slot)
            return len(slots)

    def users(self) -> list[str]:
        with self._lock:
            return list(self._by_user)

    def revalidate(self, users: Sequence[str], current: Mapping[str, Current]) -> int:
        """Drop the entries of *users* whose account is gone, disabled or has another stored
        value than the one verified (*current* lacks users without exactly one row)."""
        dropped = 0
        with self._lock:
            for user in users:
                now = current.get(user)
                for slot in list(self._by_user.get(user, ())):
                    _, digest, _ = self._entries[slot]
                    if now is None or not now[1] or now[0] is None or \
                            not hmac.compare_digest(digest, self._digest(now[0])):
                        self._drop(slot)
                        dropped += 1
        return dropped

    def _drop(self, slot: bytes) -> None:
        entry = self._entries.pop(slot, None)
        if entry is None:
            return
        slots = self._by_user.get(entry[0])
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self._by_user[entry[0]]
