"""The credential check: is this password right for this account, and may it log in?

It takes :class:`~eximauthd.core.credentials.Credentials`, which the edge has read and which
already passed the refusals that need no lookup (empty, oversized or malformed credentials).
Then, in this order:

1. Unknown (or ambiguous) users are verified against a dummy argon2id hash, and failed checks of
   cheap legacy hashes are padded the same way, so response time does not tell which users exist.
2. A disabled account is ``no`` even with the right password.
3. A right password stored under an old scheme or old parameters is rehashed to argon2id, with a
   compare-and-swap on the old value so a concurrent password change is never overwritten.

Storage failures raise :class:`~eximauthd.errors.StorageError`: the caller answers ``defer``.
Nothing here ever logs or raises with a password or a hash in the text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..core.clients import read_client
from ..core.credentials import Credentials, read_credentials
from ..core.decision import Decision, Reason
from ..core.hashing import Hasher, Scheme
from ..db.accounts import AccountStore
from ..errors import HashingError, StorageError, ValueTooLongError
from ..settings import ThrottleConfig
from .cache import AuthCache

__all__ = ["REHASH_BACKOFF_SECONDS", "Authenticator"]

_log = logging.getLogger("eximauthd.authn")

# Accounts whose hash-shaped stored value was reported; past this many, reporting starts over.
_REPORTED_MAX = 10_000

# A rehash the database refused (read-only user or server, a column too narrow) is not tried
# again for this account before this long: each try is one more failing write per login, and
# one more log line.
REHASH_BACKOFF_SECONDS = 600.0
_BACKOFF_MAX = 10_000

_ARGON2 = frozenset({Scheme.ARGON2ID, Scheme.ARGON2I})
# How verify() counts a client's network when no throttle configuration says (the defaults).
_PREFIXES = (ThrottleConfig().ipv4_prefix, ThrottleConfig().ipv6_prefix)


class Authenticator:
    """Verify credentials against an :class:`~eximauthd.db.accounts.AccountStore`."""

    def __init__(self, store: AccountStore, hasher: Hasher, cache: AuthCache | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.hasher = hasher
        self.cache = cache
        self._reported: set[str] = set()
        self._reported_lock = threading.Lock()
        self._clock = clock
        # account -> when its rehash may be tried again, after the database refused one
        self._rehash_after: dict[str, float] = {}
        self._narrow_reported = False

    def __repr__(self) -> str:
        return f"Authenticator({self.store!r}, {self.hasher!r})"

    def verify(self, username: str, password: str, client_ip: str = "") -> Decision:
        """Decide whether *username* may authenticate with *password*: :meth:`check` of the
        credentials read as the service reads them (``eximauthd check`` uses this).

        :raises StorageError: the database could not answer; never turned into ``yes``.
        """
        credentials = read_credentials(username, password, read_client(client_ip, *_PREFIXES))
        if isinstance(credentials, Decision):
            return credentials
        return self.check(credentials)

    def check(self, credentials: Credentials,
              rows: Sequence[Sequence[Any]] | None = None) -> Decision:
        """Decide whether *credentials* log in.

        Returns ``yes`` or ``no`` with a log-safe reason (``unknown-user``, ``bad-password``,
        ``disabled``, ...).

        :raises StorageError: the database could not answer; never turned into ``yes``.
        """
        address, password = credentials.address, credentials.password
        address_text = credentials.user
        generation = self.cache.generation(address_text) if self.cache is not None else (0, 0)
        # The rows of the store's lookup when the caller read them already (with the
        # throttle's counts, in one statement), else read here.
        records = self.store.find(address) if rows is None else self.store.records(address, rows)
        if len(records) != 1:
            self.hasher.verify_dummy(password)
            if len(records) > 1:
                _log.error("%d accounts match %s; refusing all of them", len(records), address)
                return Decision.no(Reason.AMBIGUOUS_USER)
            return Decision.no(Reason.UNKNOWN_USER)
        record = records[0]
        result = self.hasher.verify(record.password, password)
        if not result.matched:
            if result.scheme not in _ARGON2:
                self.hasher.verify_dummy(password)
            if result.looks_like:
                self._report_hash_shaped(address_text, result.looks_like)
            # A reason hashing does not know is a ValueError: the service answers defer.
            return Decision.no(Reason.BAD_PASSWORD if result.reason == "mismatch"
                               else Reason(result.reason))
        if not record.enabled:
            return Decision.no(Reason.DISABLED)
        if result.needs_rehash and record.password is not None \
                and not self._backing_off(address_text):
            return self._rehash(credentials, old=record.password, scheme=result.scheme)
        if self.cache is not None and record.password is not None:
            self.cache.put(address_text, password, credentials.client.network, record.password,
                           generation)
        return Decision.yes()

    def _report_hash_shaped(self, address: str, kind: str) -> None:
        # Once per account, not per attempt: a client retrying every minute must not flood the
        # log, and the admin needs one line per row to fix.  The kind only, never the value.
        with self._reported_lock:
            if address in self._reported:
                return
            if len(self._reported) >= _REPORTED_MAX:
                self._reported.clear()
            self._reported.add(address)
        _log.error("refusing the stored password of %s: a bare value shaped like %s is never "
                   "taken as plaintext; set [legacy] password_scheme (docs/passwords.md)",
                   address, kind)

    def _backing_off(self, address: str) -> bool:
        with self._reported_lock:
            until = self._rehash_after.get(address)
            if until is None:
                return False
            if self._clock() < until:
                return True
            del self._rehash_after[address]
            return False

    def _back_off(self, address: str) -> None:
        with self._reported_lock:
            if len(self._rehash_after) >= _BACKOFF_MAX:
                self._rehash_after.clear()
            self._rehash_after[address] = self._clock() + REHASH_BACKOFF_SECONDS

    def _rehash(self, credentials: Credentials, *, old: str, scheme: Scheme) -> Decision:
        # The password is right whatever happens here: a failed upgrade is logged, not refused.
        address_text = credentials.user
        try:
            new = self.hasher.hash(credentials.password)
            changed = self.store.replace_password(credentials.address, old, new)
        except ValueTooLongError as exc:
            # The same for every legacy login until the column is widened: said once (per
            # process), at length, rather than a warning at every login that drowns the log;
            # and not tried again for this account for a while (a hash and a refused UPDATE).
            self._back_off(address_text)
            with self._reported_lock:
                first, self._narrow_reported = not self._narrow_reported, True
            if first:
                _log.warning("legacy passwords are not upgraded to argon2id: %s; logins go "
                             "on with the legacy hashes (said once)", exc)
            else:
                _log.debug("could not upgrade %s password of %s: column too narrow",
                           scheme.value, address_text)
            return Decision.yes()
        except (StorageError, HashingError) as exc:
            self._back_off(address_text)
            _log.warning("could not upgrade %s password of %s to argon2id: %s; not tried again "
                         "for %.0f minutes", scheme.value, address_text, exc,
                         REHASH_BACKOFF_SECONDS / 60)
            return Decision.yes()
        if changed:
            _log.info("upgraded %s password of %s to argon2id (client %s)", scheme.value,
                      address_text, credentials.client.ip or "-")
            return Decision.yes(Reason.OK_REHASHED)
        _log.info("password of %s changed meanwhile; not upgraded", address_text)
        return Decision.yes()
