"""The credential check: is this password right for this account, and may it log in?

Order matters and is the point of the module:

1. An empty username or password is ``no`` before anything else: the seed's open relay was an
   empty password "matching" the empty result of a lookup for an unknown user.
2. A username that is not an address cannot name an account: ``no`` without database work.
3. Unknown (or ambiguous) users are verified against a dummy argon2id hash, and failed checks of
   cheap legacy hashes are padded the same way, so response time does not tell which users exist.
4. A disabled account is ``no`` even with the right password.
5. A right password stored under an old scheme or old parameters is rehashed to argon2id, with a
   compare-and-swap on the old value so a concurrent password change is never overwritten.

Storage failures raise :class:`~eximauthd.errors.StorageError`: the caller answers ``defer``.
Nothing here ever logs or raises with a password or a hash in the text.
"""

from __future__ import annotations

import logging
import threading

from ..core.addresses import Address, parse_address
from ..core.decision import Decision
from ..core.hashing import Hasher, Scheme
from ..db.accounts import AccountStore
from ..errors import AddressError, HashingError, StorageError
from .cache import AuthCache

__all__ = ["MAX_PASSWORD_BYTES", "Authenticator", "precheck"]

_log = logging.getLogger("eximauthd.authn")

# Far above any real password; bounds the work one request can cause.
MAX_PASSWORD_BYTES = 1024
# Accounts whose hash-shaped stored value was reported; past this many, reporting starts over.
_REPORTED_MAX = 10_000

_ARGON2 = frozenset({Scheme.ARGON2ID, Scheme.ARGON2I})


class Authenticator:
    """Verify credentials against an :class:`~eximauthd.db.accounts.AccountStore`."""

    def __init__(self, store: AccountStore, hasher: Hasher, cache: AuthCache | None = None) -> None:
        self.store = store
        self.hasher = hasher
        self.cache = cache
        self._reported: set[str] = set()
        self._reported_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Authenticator({self.store!r}, {self.hasher!r})"

    def verify(self, username: str, password: str, client_ip: str = "") -> Decision:
        """Decide whether *username* may authenticate with *password*.

        Returns ``yes`` or ``no`` with a log-safe reason (``unknown-user``, ``bad-password``,
        ``disabled``, ...).

        :raises StorageError: the database could not answer; never turned into ``yes``.
        """
        refused = precheck(username, password)
        if refused is not None:
            return refused
        address = parse_address(username)
        address_text = str(address)
        generation = self.cache.generation(address_text) if self.cache is not None else (0, 0)
        records = self.store.find(address)
        if len(records) != 1:
            self.hasher.verify_dummy(password)
            if len(records) > 1:
                _log.error("%d accounts match %s; refusing all of them", len(records), address)
                return Decision.no("ambiguous-user")
            return Decision.no("unknown-user")
        record = records[0]
        result = self.hasher.verify(record.password, password)
        if not result.matched:
            if result.scheme not in _ARGON2:
                self.hasher.verify_dummy(password)
            if result.looks_like:
                self._report_hash_shaped(address_text, result.looks_like)
            reason = "bad-password" if result.reason == "mismatch" else result.reason
            return Decision.no(reason)
        if not record.enabled:
            return Decision.no("disabled")
        if result.needs_rehash and record.password is not None:
            return self._rehash(address, old=record.password, password=password,
                                scheme=result.scheme, client_ip=client_ip)
        if self.cache is not None and record.password is not None:
            self.cache.put(address_text, password, client_ip, record.password, generation)
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

    def _rehash(self, address: Address, *, old: str, password: str, scheme: Scheme,
                client_ip: str) -> Decision:
        # The password is right whatever happens here: a failed upgrade is logged, not refused.
        address_text = str(address)
        try:
            new = self.hasher.hash(password)
            changed = self.store.replace_password(address, old, new)
        except (StorageError, HashingError) as exc:
            _log.warning("could not upgrade %s password of %s to argon2id: %s", scheme.value,
                         address_text, exc)
            return Decision.yes()
        if changed:
            _log.info("upgraded %s password of %s to argon2id (client %s)", scheme.value,
                      address_text, client_ip or "-")
            return Decision.yes("ok-rehashed")
        _log.info("password of %s changed meanwhile; not upgraded", address_text)
        return Decision.yes()


def precheck(username: str, password: str) -> Decision | None:
    """The refusals that need no lookup (empty, oversized or malformed credentials), else None.

    Pure: an empty password is refused even when the database is down.
    """
    if not username:
        return Decision.no("empty-username")
    if not password:
        return Decision.no("empty-password")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        return Decision.no("password-too-long")
    try:
        parse_address(username)
    except AddressError:
        return Decision.no("malformed-username")
    if _has_surrogates(password):
        # Undecodable bytes smuggled in as surrogates cannot be a stored password.
        return Decision.no("malformed-password")
    return None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
