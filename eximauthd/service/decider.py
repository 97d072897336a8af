"""The decisions the service makes, as plain synchronous calls.

:class:`Decider` joins the pure parts (:mod:`~eximauthd.core.policy`) to storage (accounts, grants)
and turns every storage failure into ``defer``: this is the one place where an exception from
the database becomes an answer, and that answer is never ``yes``.  The service runs these calls
in its worker threads; the HTTP API and the socket share them, so both give the same answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ..auth.authn import Authenticator
from ..auth.defenses import Defenses
from ..auth.grantcache import GrantCache
from ..core.addresses import Address, parse_address
from ..core.credentials import Credentials
from ..core.decision import Decision, Reason, Result
from ..core.hashing import Hasher
from ..core.policy import Relay, RelayPolicy, decide_relay
from ..db.accounts import make_account_store
from ..db.engine import Database
from ..db.grants import GrantStore
from ..errors import AddressError, StorageError
from ..settings import Config
from .verifier import faster, time_verifiers

__all__ = ["Decider"]

_log = logging.getLogger("eximauthd.decider")

# Looked up by ping(): a query on the real tables proves the schema is there, not just a socket.
_PROBE = Address("eximauthd-readiness-probe", "invalid")


class Decider:
    """Answer AUTH, RELAY and PING from a configuration."""

    def __init__(self, config: Config, db: Database | None = None) -> None:
        self.config = config
        self.db = db or Database(config.database)
        # At most service.workers password checks at once, however many threads call: argon2
        # takes a core and memory_cost each.  They run on these threads only, so that no more
        # threads than this ever hold argon2's memory (argon2-cffi's is kept by the allocator
        # of the thread that used it, for the next hash).  The database half of an AUTH (the
        # throttle's reservation and the account's row) runs before, on the service's own
        # threads, so that a thread waiting for MariaDB never keeps a core from hashing.
        self.checks = config.service.workers or os.cpu_count() or 1
        self._hashing = ThreadPoolExecutor(self.checks, thread_name_prefix="eximauthd-argon2")
        hashing = config.hashing
        # verify_with "auto": the CPU time each library took, measured here (else empty).
        self.verifier_seconds: dict[str, float] = {}
        if hashing.verify_with == "auto":
            # Measured on the threads that will hash, so the measuring keeps no memory of its own.
            self.verifier_seconds = self._hashing.submit(time_verifiers, hashing).result()
            hashing = replace(hashing, verify_with=faster(self.verifier_seconds))
        self.hasher = Hasher(hashing, password_scheme=config.legacy.password_scheme)
        self.accounts = make_account_store(config, self.db)
        self.grants = GrantStore(self.db)
        self.grant_cache = GrantCache(config.policy.grant_cache_seconds)
        # Throttle, cache, rate limiter, failure floor: the service reaches them here too.
        self.defenses = Defenses(config, self.db, self.accounts)
        self.authn = Authenticator(self.accounts, self.hasher, self.defenses.cache)
        self.policy = RelayPolicy(frozenset(config.policy.strict_domains))

    def __repr__(self) -> str:
        return f"Decider({self.db!r})"

    @property
    def verifier_line(self) -> str:
        """Which library verifies argon2id and, when "auto" chose it, what each one took."""
        c = self.hasher.config
        if not self.verifier_seconds:
            return f"argon2id verified with {c.verify_with} (as configured)"
        took = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in self.verifier_seconds.items())
        return (f"argon2id verified with {c.verify_with} ({took} of CPU at m={c.memory_cost} "
                f"t={c.time_cost} p={c.parallelism})")

    def forget(self, address: str) -> Decision:
        """Drop the cached successes and grants of *address* (``FORGET``); always ``yes``."""
        # Nothing is cached or remembered under a malformed address.
        with contextlib.suppress(AddressError):
            login = str(parse_address(address))
            self.defenses.forget(login)
            self.grant_cache.forget(login)
        return Decision.yes(Reason.FORGOTTEN)

    def auth(self, credentials: Credentials) -> Decision:
        """Verify credentials; a database failure is ``defer``, never ``yes`` or ``no``.

        The throttle reserves the check (and may refuse it without a password check);
        afterwards a failure stays counted and a success takes its reservation back.
        """
        throttle, reservation = self.defenses.throttle, None
        try:
            if throttle is not None:
                # The account's row is read by the statement that counts: one round trip less.
                throttled, reservation = throttle.reserve(
                    credentials, self.accounts.login)
                if throttled is not None:
                    return throttled
            rows = reservation.rows if reservation is not None else None
            decision = self._hashing.submit(
                lambda: self.authn.check(credentials, rows)).result()
        except StorageError as exc:
            _log.error("AUTH deferred: %s", exc)
            if throttle is not None and reservation is not None:
                throttle.abandon(reservation)
            return Decision.defer(Reason.DATABASE_UNAVAILABLE)
        if throttle is not None and reservation is not None:
            throttle.settle(reservation, succeeded=decision.result is Result.YES,
                            credentials=credentials)
        return decision

    def relay_without_storage(self, relay: Relay) -> Decision | None:
        """The relay decision when the pure policy or the remembered grants settle it, else
        None (grants must be read).

        Cheap and free of I/O, so the service may call it on its event loop.  Remembered
        grants only ever allow: a refusal waits for :meth:`relay_with_grants`.
        """
        first = decide_relay(relay, (), self.policy)
        if first.reason is not Reason.SENDER_MISMATCH:
            return first
        remembered = self.grant_cache.get(str(relay.login))
        if remembered:
            granted = decide_relay(relay, remembered, self.policy)
            if granted.result is Result.YES:
                return granted
        return None

    def relay_with_grants(self, relay: Relay) -> Decision:
        """The relay decision for a sender the policy alone refused: read the id's grants.

        Call it only after :meth:`relay_without_storage` returned None.
        """
        login = str(relay.login)
        generation = self.grant_cache.generation()
        # What is remembered is read from the primary: a replica that has not yet applied a
        # `grant remove` would otherwise have the removed grant remembered for the whole TTL,
        # long after the replica caught up (without the cache it lasts only the lag).  Cheap:
        # with the cache on, only a login's first granted RELAY per TTL and refusals come here.
        try:
            grants = tuple(g.sender for g in self.grants.list(
                login, primary=self.grant_cache.ttl > 0))
        except StorageError as exc:
            _log.error("RELAY deferred: %s", exc)
            return Decision.defer(Reason.DATABASE_UNAVAILABLE)
        self.grant_cache.put(login, grants, generation)
        return decide_relay(relay, grants, self.policy)

    def ping(self) -> Decision:
        """``yes`` when the account and grant tables answer, else ``defer``."""
        try:
            self.accounts.find(_PROBE, limit=1)
            self.grants.list(str(_PROBE))
        except StorageError as exc:
            _log.warning("not ready: %s", exc)
            return Decision.defer(Reason.DATABASE_UNAVAILABLE)
        return Decision.yes(Reason.READY)

    def close(self) -> None:
        self._hashing.shutdown(wait=True)
        self.defenses.close()
        self.db.dispose()

