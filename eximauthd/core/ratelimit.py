"""Per-user outbound limits on RELAY: recipients and messages, several windows at once.

Decisions are made in memory, on the service's event loop, with no database round trip per
recipient: each instance keeps the counts it has not written yet and the totals it last read,
and a background task adds its counts to the shared table and reads everybody's back every
``sync_interval_ms`` (one transaction).  Within one instance a limit is exact; across N
instances it can be overshot by what the others accepted since their last sync.

A count is in exactly one place at every moment: unwritten (``_pending``), handed to a sync
that has not answered yet (``_inflight``), or in the totals read back (``_shared``).  The
in-flight counts are neither of the others for the whole database round trip; forgetting them
there let a user over the limit relay during every sync.  And a served instance judges a user
only on totals a sync read for it: one new here (a restart, another MX, a long pause) waits for
that read instead of starting from zero.

Windows are fixed buckets (``floor(now / window)``) read as a sliding window: the previous
bucket's count weighs by the part of it still inside the window, so a burst at a bucket edge
cannot pass twice the limit.

A message is counted once per SMTP transaction: the snippets send an id that Exim keeps in an
``acl_m`` variable (reset at every MAIL), and the first recipient with a new id counts the
message.  Without that field (older snippets) only recipients are counted.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..settings import RateLimitConfig
from .decision import Decision, Reason
from .limits import KINDS, Limit, RateKey, format_window, parse_limits

__all__ = ["RateLimiter", "SyncBatch", "estimate"]

_log = logging.getLogger("eximauthd.ratelimit")

_SEEN_MAX = 100_000  # transactions remembered (one per message in flight, far more than needed)
# Users whose shared totals are read back at each sync: those who asked here lately (admitted
# or deferred).  The totals of the others are kept as last read, never dropped, until their
# buckets expire: forgetting them would give a user back after a pause a fresh quota.
_ACTIVE_SECONDS = 600.0


def estimate(previous: int, current: int, now: float, window: int) -> float:
    """Sliding-window estimate of the count in the last *window* seconds.  Pure."""
    into = (now % window) / window
    return previous * (1.0 - into) + current


@dataclass(frozen=True, slots=True)
class SyncBatch:
    """What one sync writes (counts not yet in the database) and which users it reads back."""

    deltas: dict[RateKey, int]
    addresses: frozenset[str]
    now: int


class RateLimiter:
    """Admit or defer one RELAY for a user; not thread-safe (the event loop owns it)."""

    def __init__(self, config: RateLimitConfig, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 synced: bool = True) -> None:
        """*synced* True: the empty totals are everybody's (in-process tools and tests).

        False (a served instance): a user is admitted only once a sync has read its totals
        and the per-user limits while it was active here; until then :meth:`admit` defers and
        :meth:`needs_read` says so, for the caller to wait for the next sync.
        """
        self.config = config
        self.defaults = {kind: parse_limits(getattr(config, kind)) for kind in KINDS}
        self.overrides: dict[str, dict[str, tuple[Limit, ...]]] = {}
        self._clock = clock
        self._monotonic = monotonic
        self._shared: dict[RateKey, int] = {}
        self._pending: dict[RateKey, int] = {}
        # Counts handed to a sync that has not answered: not in _pending any more, not yet in
        # _shared.  They still count, or every sync would open a window past the limit.
        self._inflight: dict[RateKey, int] = {}
        self._active: dict[str, float] = {}  # address -> when it last relayed (monotonic)
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tripped: set[RateKey] = set()
        # None: never synchronised.  Admitting then would judge a user by the defaults and a
        # zero count, whatever it already sent and whatever limit an admin set for it.
        self._synced_at: float | None = monotonic() if synced else None
        # Users whose totals the last successful sync read (None: everybody's are known).  A
        # user absent from it (new here, back after a pause) is judged on counts a sync read.
        self._read: frozenset[str] | None = None if synced else frozenset()
        self._overrides_read = synced

    def __repr__(self) -> str:
        return (f"RateLimiter(recipients={list(map(str, self.defaults['recipients']))}, "
                f"messages={list(map(str, self.defaults['messages']))})")

    def limits(self, address: str, kind: str) -> tuple[Limit, ...]:
        return self.overrides.get(address, {}).get(kind, self.defaults[kind])

    def _count(self, key: RateKey) -> int:
        return (self._shared.get(key, 0) + self._inflight.get(key, 0)
                + self._pending.get(key, 0))

    def admit(self, address: str, transaction: str = "") -> Decision | None:
        """None when *address* may relay one more recipient (and it is counted), else defer.

        The decision is ``defer rate-limit-<kind>-<window>`` (Exim answers 4xx), or
        ``defer ratelimit-unavailable`` when the shared counts are too old to trust or have
        not been read for this user yet (see :meth:`needs_read`).
        """
        if self.staleness > self.config.max_staleness_seconds:
            return Decision.defer(Reason.RATELIMIT_UNAVAILABLE)
        # Deferred users stay active too: their totals must keep being read back.
        self._active[address] = self._monotonic()
        if self.needs_read(address):
            return Decision.defer(Reason.RATELIMIT_UNAVAILABLE)
        now = self._clock()
        new_message = bool(transaction) and (address, transaction) not in self._seen
        wanted = [("recipients", 1), ("messages", 1 if new_message else 0)]
        adds: list[RateKey] = []
        for kind, amount in wanted:
            if not amount:
                continue
            for limit in self.limits(address, kind):
                bucket = int(now // limit.window_seconds)
                key = (address, kind, limit.window_seconds, bucket)
                previous = self._count((address, kind, limit.window_seconds, bucket - 1))
                if estimate(previous, self._count(key), now, limit.window_seconds) + amount \
                        > limit.maximum:
                    self._trip(key, limit)
                    return Decision.defer(
                        Reason.RATE_LIMIT, f"{kind}-{format_window(limit.window_seconds)}")
                adds.append(key)
        for key in adds:
            self._pending[key] = self._pending.get(key, 0) + 1
        if new_message:
            self._seen[(address, transaction)] = None
            if len(self._seen) > _SEEN_MAX:
                self._seen.popitem(last=False)
        return None

    def needs_read(self, address: str) -> bool:
        """Whether *address*'s totals must be read by a sync before it can be admitted."""
        return self._read is not None and address not in self._read

    def touch(self, address: str) -> None:
        """Mark *address* active: the next sync reads its totals."""
        self._active[address] = self._monotonic()

    def _trip(self, key: RateKey, limit: Limit) -> None:
        if key in self._tripped:
            return
        self._tripped.add(key)
        address, kind = key[0], key[1]
        # The one line an admin must see: a user hitting a limit is usually a stolen password.
        _log.warning("rate limit reached: %s has used its %d %s per %s; further %s are "
                     "deferred until the window moves on. A compromised account is the usual "
                     "cause: check it, `eximauthd user disable %s` if in doubt", address,
                     limit.maximum, kind, format_window(limit.window_seconds), kind, address)

    # --- synchronisation with the shared table -------------------------------------------

    def take(self) -> SyncBatch:
        """Hand the unwritten counts to a sync (which runs in a worker thread)."""
        deltas, self._pending = self._pending, {}
        _add(self._inflight, deltas, 1)
        cutoff = self._monotonic() - _ACTIVE_SECONDS
        self._active = {a: t for a, t in self._active.items() if t >= cutoff}
        return SyncBatch(deltas, frozenset(self._active), int(self._clock()))

    def synced(self, batch: SyncBatch, shared: Mapping[RateKey, int],
               overrides: Mapping[str, Mapping[str, tuple[Limit, ...]]] | None) -> None:
        """Take the totals read back by a successful sync (they include *batch*).

        The read replaces what was known of the addresses it covered (a reset lowers them);
        the totals of every other user are kept until their buckets expire.  Counts admitted
        since :meth:`take` stay pending: the read cannot hold them.  *overrides* None: they
        could not be read this time; the last ones read stay.
        """
        _add(self._inflight, batch.deltas, -1)  # written: the read back holds them now
        kept = {k: n for k, n in self._shared.items()
                if k[0] not in batch.addresses and (k[3] + 2) * k[2] > batch.now}
        self._shared = kept | dict(shared)
        if overrides is not None:
            self.overrides = {a: dict(k) for a, k in overrides.items()}
            self._overrides_read = True
        if self._read is not None and self._overrides_read:
            # Not before the overrides were read once: a user with a limit of its own would
            # be judged by the defaults meanwhile.
            self._read = batch.addresses
        self._synced_at = self._monotonic()
        oldest = batch.now - 2 * max(_windows(self.defaults.values(), self.overrides),
                                     default=0)
        self._tripped = {k for k in self._tripped if (k[3] + 1) * k[2] > oldest}

    def failed(self, batch: SyncBatch) -> None:
        """A sync failed: keep its counts for the next one."""
        _add(self._inflight, batch.deltas, -1)
        _add(self._pending, batch.deltas, 1)

    @property
    def staleness(self) -> float:
        """Seconds since the last successful sync; infinite before the first one."""
        if self._synced_at is None:
            return float("inf")
        return self._monotonic() - self._synced_at


def _add(counts: dict[RateKey, int], deltas: Mapping[RateKey, int], sign: int) -> None:
    """Add (sign 1) or take back (sign -1) *deltas* in *counts*; zero entries are dropped."""
    for key, n in deltas.items():
        left = counts.get(key, 0) + sign * n
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)


def _windows(defaults: Iterable[tuple[Limit, ...]],
             overrides: Mapping[str, Mapping[str, tuple[Limit, ...]]]) -> list[int]:
    found = [limit.window_seconds for limits in defaults for limit in limits]
    found += [limit.window_seconds for kinds in overrides.values() for limits in kinds.values()
              for limit in limits]
    return found
