"""The abuse defenses of one process, under one owner.

:class:`Defenses` holds the AUTH throttle, the cache of recent successes (and its revalidation),
the RELAY rate limiter with the stores it syncs through, and the delay and floor that keep a
failed AUTH from telling anything by its duration.  The decider calls the parts that run in a
worker thread (the throttle, the cache); the service calls the ones that run on its event loop
and starts the background loops (:meth:`Defenses.start`, :meth:`Defenses.stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..core.addresses import parse_address
from ..core.clients import Client, read_client
from ..core.credentials import Credentials, read_credentials
from ..core.decision import THROTTLED, Decision, Reason, Result
from ..core.policy import Relay
from ..core.protocol import AuthRequest, Request
from ..core.ratelimit import RateLimiter, SyncBatch
from ..db.accounts import AccountStore
from ..db.counters import LimitStore, RateStore
from ..db.engine import Database
from ..errors import StorageError
from ..settings import Config
from .cache import AuthCache
from .padding import FailureFloor
from .throttle import Throttle, load_secret

__all__ = ["Defenses"]

# The loops' lines keep the logger they had when the service ran them.
_log = logging.getLogger("eximauthd.service")


# A decision is an immutable value: the one every cache hit answers is made once.
_CACHED = Decision.yes(Reason.OK_CACHED)


def _nothing() -> None:
    pass


class Defenses:
    """Throttle, cache, rate limiter and failure floor of one process, with their loops."""

    def __init__(self, config: Config, db: Database, accounts: AccountStore) -> None:
        self.config = config
        self._accounts = accounts
        cache = config.cache
        self.cache = AuthCache(cache.ttl_seconds, cache.max_entries) if cache.ttl_seconds else None
        self._revalidated_at = time.monotonic()
        # Entries are trusted only while revalidation keeps succeeding: with the database gone,
        # cached logins stop too (and AUTH defers), as every other login does.
        self._cache_trust = 3 * config.cache.revalidate_seconds
        self.throttle = (Throttle(config.throttle, db, load_secret(config.throttle.secret_file))
                         if config.throttle.enabled else None)
        self._timeout = config.service.request_timeout_ms / 1000
        # Trusting empty totals suits in-process use; begin_serving() replaces it with one that
        # waits for the database's.
        self.limiter = RateLimiter(config.ratelimit) if config.ratelimit.enabled else None
        # Syncs of the rate counters get a thread of their own: they must not wait behind
        # argon2 work, nor take a slot that counts against max_pending.
        self.sync_thread = ThreadPoolExecutor(1, thread_name_prefix="eximauthd-sync")
        self._rates = RateStore(db)
        self._user_limits = LimitStore(db)
        self._pruned_at = 0
        # RELAYs waiting for a sync to read their user's totals; the sync that takes them
        # answers them, whatever its outcome (admit() then decides, failing closed).
        self._read_waiters: list[asyncio.Future[None]] = []
        self._wake_sync = asyncio.Event()
        self._on_sync_error: Callable[[], None] = _nothing
        self._syncing: asyncio.Task[None] | None = None
        self._revalidating: asyncio.Task[None] | None = None
        self._failure_delay = config.throttle.failure_delay_ms / 1000
        # Well inside Exim's readsocket timeout, whatever a stalled check measured.
        self._failure_floor = FailureFloor(cap=0.6 * self._timeout,
                                           minimum=config.throttle.failure_floor_ms / 1000)

    # --- reading a request once ---------------------------------------------------------------

    def client(self, client_ip: str) -> Client:
        """The client of *client_ip*, its network counted as the throttle counts it."""
        t = self.config.throttle
        return read_client(client_ip, t.ipv4_prefix, t.ipv6_prefix)

    def credentials(self, request: AuthRequest) -> Credentials | Decision:
        """The typed credentials of *request*, or the ``no`` that refuses them unlooked-up."""
        return read_credentials(request.username, request.password,
                                self.client(request.client_ip))

    # --- the AUTH cache --------------------------------------------------------------------

    def cached_auth(self, credentials: Credentials) -> Decision | None:
        """``yes ok-cached`` for a repeat of a recent success, else None.  Memory only, so the
        service may call it on its event loop."""
        if self.cache is None or time.monotonic() - self._revalidated_at > self._cache_trust:
            return None
        if self.cache.hit(credentials.user, credentials.password, credentials.client.network):
            return _CACHED
        return None

    def forget(self, login: str) -> None:
        """Drop the cached successes of *login* (a canonical address, as the cache keys it)."""
        if self.cache is not None:
            self.cache.forget(login)

    def revalidate_cache(self) -> int:
        """Re-read every cached user's row; drop entries whose account changed.

        :raises StorageError: the database failed (the caller keeps the entries' TTL running).
        """
        if self.cache is None:
            return 0
        users = self.cache.users()
        records = self._accounts.find_many([parse_address(u) for u in users]) if users else {}
        current = {u: (r[0].password, r[0].enabled) for u, r in records.items() if len(r) == 1}
        dropped = self.cache.revalidate(users, current)
        self._revalidated_at = time.monotonic()
        return dropped

    # --- how long a failed AUTH takes ------------------------------------------------------

    async def padded(self, decision: Decision, elapsed: float) -> Decision:
        """Make a ``no`` for an account take as long as the costliest check seen lately.

        Without it a wrong password for an account with a costly legacy hash takes longer than
        an unknown user, which names the accounts that exist (see :mod:`eximauthd.auth.padding`).
        Only for credentials that were checked (malformed ones never get here); ``defer`` is
        left alone: it looked at no account.
        """
        if decision.result is Result.DEFER:
            return decision
        now = time.monotonic()
        if decision.reason not in THROTTLED:  # a throttled answer checked nothing
            self._failure_floor.observe(elapsed, now)
        if decision.result is Result.NO:
            pad = self._failure_floor.padding(elapsed, now)
            if pad > 0:
                await asyncio.sleep(pad)
        return decision

    def delays_failure(self, request: Request, decision: Decision) -> bool:
        """Whether :meth:`delay_failure` waits before *decision* is answered."""
        return bool(self._failure_delay and isinstance(request, AuthRequest)
                    and decision.result is Result.NO)

    async def delay_failure(self, request: Request, decision: Decision) -> None:
        """Wait ``throttle.failure_delay_ms`` after an AUTH ``no``."""
        if self.delays_failure(request, decision):
            # Slows one connection's guessing; waits on the loop, not in a worker.
            await asyncio.sleep(self._failure_delay)

    # --- the RELAY rate limit ----------------------------------------------------------------

    async def over_rate(self, relay: Relay) -> Decision | None:
        """The ``defer`` for a RELAY the sender check allowed but the rate limit does not.

        Counted only once the sender check said yes, in memory (see ratelimit).
        """
        if self.limiter is not None and self.limiter.needs_read(str(relay.login)):
            await self._read_totals(self.limiter, str(relay.login))
        return self.admit(relay)

    def knows_rate(self, relay: Relay) -> bool:
        """Whether :meth:`admit` may decide *relay* now: no sync has to read its totals first."""
        return self.limiter is None or not self.limiter.needs_read(str(relay.login))

    def admit(self, relay: Relay) -> Decision | None:
        """:meth:`over_rate` without the wait: call it only when :meth:`knows_rate`.

        Memory only, so the service may call it on its event loop.
        """
        if self.limiter is None:
            return None
        return self.limiter.admit(str(relay.login), relay.transaction)

    def begin_serving(self) -> None:
        """Forget the in-process trust: judge each user on the totals a sync read for it."""
        if self.limiter is not None:
            # A served instance starts knowing nobody's totals nor the per-user limits: each
            # user's first RELAY waits for a sync to read them (see ratelimit).
            self.limiter = RateLimiter(self.config.ratelimit, synced=False)

    async def _read_totals(self, limiter: RateLimiter, address: str) -> None:
        """Wait (at most the request timeout) for a sync that reads *address*'s totals."""
        limiter.touch(address)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._read_waiters.append(waiter)
        self._wake_sync.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), self._timeout)

    async def sync_rates(self) -> bool:
        """Write this instance's new counts and read everybody's back; False on failure."""
        if self.limiter is None:
            return True
        limiter = self.limiter
        batch = limiter.take()
        waiters, self._read_waiters = self._read_waiters, []
        try:
            return await self._sync(limiter, batch)
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _sync(self, limiter: RateLimiter, batch: SyncBatch) -> bool:

        def work() -> tuple[Any, Any]:
            # Only this write decides whether the batch is counted; what follows is best
            # effort, or a failure there would have the same counts added twice.
            shared = self._rates.add_and_read(batch.deltas, batch.addresses, batch.now)
            overrides = None  # not read: the limiter keeps the last ones (never none at all)
            try:
                overrides = self._user_limits.all()
                if batch.now - self._pruned_at >= 60:
                    self._pruned_at = batch.now
                    self._rates.prune(batch.now)
            except StorageError as exc:
                _log.warning("rate limits: overrides or pruning skipped: %s", exc)
            return shared, overrides

        try:
            shared, overrides = await asyncio.get_running_loop().run_in_executor(
                self.sync_thread, work)
        except StorageError as exc:
            limiter.failed(batch)
            self._on_sync_error()
            _log.warning("rate counters not synchronised (%s): %s", _age(limiter.staleness),
                         exc)
            return False
        limiter.synced(batch, shared, overrides)
        return True

    # --- the background loops ----------------------------------------------------------------

    def start(self, on_sync_error: Callable[[], None] = _nothing) -> None:
        """Start syncing the rate counters and revalidating the cache (those configured).

        *on_sync_error* is called on every failed sync (the service counts them).
        """
        self._on_sync_error = on_sync_error
        if self.limiter:
            self._syncing = asyncio.create_task(self._sync_forever())
        if self.cache is not None:
            self._revalidating = asyncio.create_task(self._revalidate_forever())

    async def stop(self) -> None:
        """Stop the loops; write what this instance counted last."""
        revalidating, self._revalidating = self._revalidating, None
        if revalidating is not None:
            revalidating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await revalidating
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncing
            await self.sync_rates()  # what this instance counted last

    def close(self) -> None:
        """Wait for the sync thread's work to end; take back the reservations still held."""
        self.sync_thread.shutdown(wait=True)
        if self.throttle is not None:
            self.throttle.close()

    async def _sync_forever(self) -> None:
        interval = self.config.ratelimit.sync_interval_ms / 1000
        while True:
            # At once on start: a restarted instance loads the overrides before long.
            await self.sync_rates()
            # Early when a RELAY waits for its user's totals.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_sync.wait(), interval)
            self._wake_sync.clear()

    async def _revalidate_forever(self) -> None:
        interval = self.config.cache.revalidate_seconds
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                dropped = await loop.run_in_executor(self.sync_thread, self.revalidate_cache)
            except StorageError as exc:
                _log.warning("AUTH cache not revalidated: %s", exc)
                continue
            if dropped:
                _log.info("AUTH cache: dropped %d entr%s of changed accounts", dropped,
                          "y" if dropped == 1 else "ies")


def _age(seconds: float) -> str:
    return "none succeeded yet" if seconds == float("inf") else f"{seconds:.0f}s old"
