"""Brute-force throttling of AUTH, shared by every instance on one database.

Password checks are counted per client network (the IPv4 address, the IPv6 /64 by default) and
per user, in a sliding window.  A check is *reserved* before the password is verified: the
request adds its row and then counts the rows, so with a limit of N at most N distinct passwords
are checked per subject and window, however many requests arrive at once and on however many
instances.  A subject over its limit gets ``no`` before any password check, so a guesser learns
nothing more until the window moves on, on every MX at once.  Three rules make the counting fair
to real users:

- every distinct wrong password for a user counts once per window (a phone retrying a stale
  password does not lock its owner out, and two devices behind one NAT retrying two stale
  passwords count two, however they alternate): a row is keyed by a keyed digest of user and
  password;
- a success takes its reservation back, so logging in never counts (far from the limits,
  within ``release_delay_ms``, together with the other successes of that while: one statement
  for many logins); a network the user logged
  in from successfully not long ago is exempt from the *user* limit, so an attacker hammering
  an account from elsewhere cannot lock its owner out of his usual networks (the per-network
  limit still applies to everyone);
- a success resets nothing else: an attacker with one valid account cannot clear the counts he
  built up against others.

A request without a client address (a local submission) counts under one fixed network,
``no-address``, never under none.  Requests refused before any lookup (empty or malformed
credentials) are not counted: they cannot guess anything, and counting them would need the
database that an empty password must never wait for.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.clients import NO_ADDRESS, Client
from ..core.credentials import Credentials
from ..core.decision import Decision, Reason
from ..db.counters import AttemptStore, KnownNetworkStore, Reserved, Subject, utcnow
from ..db.engine import Database
from ..db.prepared import Lookup
from ..errors import ConfigError, StorageError
from ..files import warn_if_readable_by_others
from ..settings import ThrottleConfig

__all__ = ["Reservation", "Throttle", "load_secret", "password_tag"]

_log = logging.getLogger("eximauthd.throttle")

# Known networks are written at most this often per (user, network) and process: a success is
# one more write only once in a while, not on every login.
_TOUCH_EVERY = 3600.0
_TOUCHED_MAX = 100_000
# One reservation in this many also deletes rows whose window is over and networks too old to
# exempt anyone (both tables would otherwise only grow).
_PRUNE_EVERY = 256


def password_tag(key: bytes, user: str, password: str) -> str:
    """A keyed digest of *user* and *password*: equal for a repeat, useless without *key*.  Pure.

    Stored so that a repeated wrong password counts once.  Wrong passwords are often nearly
    right ones (an old password, a typo), so the digest is keyed with a secret kept out of the
    database: someone who can read the table cannot test guesses against it.
    """
    message = b"\0".join([b"eximauthd-throttle-v1", user.encode("utf-8", "surrogateescape"),
                          password.encode("utf-8", "surrogateescape")])
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def load_secret(path: str) -> bytes:
    """The digest key from *path* (at least 16 bytes), or a random one when *path* is empty.

    Logs a warning (once) when users other than the owner and group can read *path*.

    :raises ConfigError: unreadable or too short.
    """
    if not path:
        return os.urandom(32)
    try:
        with open(path, "rb") as handle:
            key = handle.read(4096).strip()
    except OSError as exc:
        raise ConfigError(f"throttle.secret_file: cannot read {path}: {exc.strerror}") from None
    if len(key) < 16:
        raise ConfigError(f"throttle.secret_file: {path} holds fewer than 16 bytes")
    # Readable by others, the key lets anyone with the table test guesses against it.
    warn_if_readable_by_others(path, "the throttle key (throttle.secret_file)")
    return key


class Throttle:
    """Reserve before, and settle after, a password check.  Thread-safe; raises StorageError."""

    def __init__(self, config: ThrottleConfig, db: Database, key: bytes,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.config = config
        self.attempts = AttemptStore(db)
        self.networks = KnownNetworkStore(db)
        self._key = key
        self._clock = clock
        self._lock = threading.Lock()
        self._touched: dict[tuple[str, str], float] = {}
        self._writes = 0
        self._exempt = tuple(ipaddress.ip_network(n) for n in config.exempt_networks)
        # A reservation counts while its check runs anyway (tens of milliseconds at production
        # argon2 parameters): counting a success that much longer errs on the side of the
        # limit, and saves a DELETE per login on a busy server.
        self._releases = _Releases(self.attempts, config.release_delay_ms / 1000)

    def __repr__(self) -> str:
        c = self.config
        return (f"Throttle(window={c.window_seconds}s, ip={c.max_failures_per_ip}, "
                f"user={c.max_failures_per_user})")

    def reserve(self, credentials: Credentials, also: Lookup | None = None,
                ) -> tuple[Decision | None, Reservation]:
        """Reserve a password check; ``no throttled-ip|throttled-user`` when over a limit.

        Call :meth:`settle` with the outcome of the check that follows (not needed when
        refused: a refused request has already taken its reservation back).  The rows of
        *also* (the account's lookup, for the credentials' address) are read with the counts,
        into ``Reservation.rows``.
        """
        network, user = credentials.client.counted_as, credentials.user
        subjects = _subjects(None if self._is_exempt(credentials.client) else network, user)
        now = self._clock()
        since = now - dt.timedelta(seconds=self.config.window_seconds)
        tag, nonce = password_tag(self._key, user, credentials.password), secrets.token_hex(16)
        counts, rows = self.attempts.reserve_and_read(
            subjects, tag, nonce, now, since, also,
            None if also is None else also.values(credentials.address))
        self._maybe_prune(now, since)
        refused = self._over_limit(counts, network, user, now)
        # Far from every limit, a success may be taken back with others a little later: the
        # rows still held then stay under half a limit, so they never refuse anyone a check
        # that would have run at once.  Nearer a limit, a success is taken back at once.
        batched = refused is None and all(
            2 * found.count <= (self.config.max_failures_per_ip if scope == "ip"
                                else self.config.max_failures_per_user)
            for (scope, _), found in counts.items())
        reservation = Reservation(subjects, tag, nonce,
                                  tuple(rows) if also is not None else None, batched)
        if refused is not None:
            self._release(reservation, only_mine=True)
        return refused, reservation

    def _is_exempt(self, client: Client) -> bool:
        ip = client.address
        return ip is not None and any(ip in net for net in self._exempt)

    def _over_limit(self, counts: dict[Subject, Reserved], network: str, user: str,
                    now: dt.datetime) -> Decision | None:
        ip = counts.get(("ip", network))
        if ip is not None and ip.count > self.config.max_failures_per_ip:
            return Decision.no(Reason.THROTTLED_IP)
        if counts[("user", user)].count > self.config.max_failures_per_user:
            if network != NO_ADDRESS and self.config.trusted_network_seconds and \
                    self.networks.is_known(user, network, now - dt.timedelta(
                        seconds=self.config.trusted_network_seconds)):
                return None
            return Decision.no(Reason.THROTTLED_USER)
        return None

    def settle(self, reservation: Reservation, *, succeeded: bool,
               credentials: Credentials) -> None:
        """Keep a failed check counted; take a successful one back and remember its network."""
        if not succeeded:
            return
        if reservation.batched:
            self._releases.add(reservation)
        else:
            self._release(reservation, only_mine=False)
        self.succeeded(credentials)

    def flush(self) -> None:
        """Take back now the successes' reservations still waiting for their batch."""
        self._releases.flush()

    def close(self) -> None:
        """Flush, and start no more batches (a success after this is taken back at once)."""
        self._releases.close()

    def abandon(self, reservation: Reservation) -> None:
        """Take back a reservation whose check never ran (the database failed meanwhile)."""
        self._release(reservation, only_mine=True)

    def _release(self, reservation: Reservation, *, only_mine: bool) -> None:
        try:
            self.attempts.release(reservation.subjects, reservation.tag,
                                  reservation.nonce if only_mine else None)
        except StorageError as exc:
            # Stays counted until the window moves on: errs on the side of the limit.
            _log.warning("could not release a reserved password check: %s", exc)

    def _maybe_prune(self, now: dt.datetime, since: dt.datetime) -> None:
        with self._lock:
            self._writes += 1
            prune = self._writes % _PRUNE_EVERY == 0
        if not prune:
            return
        try:
            self.attempts.prune(since)
            if self.config.trusted_network_seconds:
                self.networks.prune(now - dt.timedelta(
                    seconds=self.config.trusted_network_seconds))
        except StorageError as exc:
            _log.warning("could not prune throttling rows: %s", exc)

    def succeeded(self, credentials: Credentials) -> None:
        """Remember the client's network as one this user logs in from."""
        network, user = credentials.client.network, credentials.user
        if network is None or not self.config.trusted_network_seconds:
            return
        key = (user, network)
        moment = time.monotonic()
        with self._lock:
            last = self._touched.get(key)
            if last is not None and moment - last < min(
                    _TOUCH_EVERY, self.config.trusted_network_seconds / 10):
                return
            if len(self._touched) >= _TOUCHED_MAX:
                self._touched.clear()
            self._touched[key] = moment
        try:
            self.networks.touch(user, network, self._clock())
        except StorageError as exc:
            with self._lock:
                self._touched.pop(key, None)
            _log.warning("could not record %s as a known network of %s: %s", network, user,
                         exc)


class _Releases:
    """Successes' reservations waiting to be taken back together, at most *delay* later.

    One batch is sent at a time: a DELETE that waits (a row lock, a slow disk) holds one
    database connection, and the successes of that while wait for the next batch instead of
    each taking a connection the workers need (a timer thread per *delay* otherwise).  And
    :meth:`close` waits for a batch already under way, so that shutdown leaves none counted.
    """

    def __init__(self, attempts: AttemptStore, delay: float) -> None:
        self._attempts = attempts
        self._delay = delay
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._pending: list[tuple[tuple[Subject, ...], str]] = []
        # Set from the first success held until its batch is sent: the successes meanwhile
        # join the batch after it.
        self._timer: threading.Timer | None = None
        self._closed = False

    def add(self, reservation: Reservation) -> None:
        held = (reservation.subjects, reservation.tag)
        with self._lock:
            at_once = self._closed or self._delay <= 0
            if not at_once:
                self._pending.append(held)
                if self._timer is not None:
                    return
                timer = self._timer = self._arm()
        if at_once:
            self._send([held])
        else:
            timer.start()

    def _arm(self) -> threading.Timer:
        timer = threading.Timer(self._delay, self._on_timer)
        timer.daemon = True
        return timer

    def _on_timer(self) -> None:
        try:
            self.flush()
        finally:
            # Even after an unexpected error: a timer left set would hold every later success.
            with self._lock:
                timer = self._timer = (self._arm() if self._pending and not self._closed
                                       else None)
            if timer is not None:
                timer.start()

    def flush(self) -> None:
        with self._sending:
            with self._lock:
                held, self._pending = self._pending, []
            if held:
                self._send(held)

    def _send(self, held: list[tuple[tuple[Subject, ...], str]]) -> None:
        try:
            self._attempts.release_many(held)
        except StorageError as exc:
            # Stays counted until the window moves on: errs on the side of the limit.
            _log.warning("could not release %d reserved password checks: %s", len(held), exc)

    def close(self) -> None:
        with self._lock:
            self._closed, timer, self._timer = True, self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()


def _subjects(network: str | None, user: str) -> tuple[Subject, ...]:
    found: tuple[Subject, ...] = () if network is None else (("ip", network),)
    return (*found, ("user", user))


@dataclass(frozen=True, slots=True)
class Reservation:
    """One reserved password check: its subjects, and the keys to take it back."""

    subjects: tuple[Subject, ...]
    tag: str = field(repr=False)
    nonce: str = field(repr=False)
    # The rows of the lookup read with the counts (hashes: never shown), None when not asked.
    rows: tuple[tuple[Any, ...], ...] | None = field(default=None, repr=False)
    # Under half of every limit when reserved: a success may be taken back in a batch.
    batched: bool = False
