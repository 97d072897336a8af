"""Password hashes: argon2id for everything new, read-only support for legacy schemes.

:class:`Hasher` never raises for a wrong password or a bad stored value: :meth:`Hasher.verify`
returns a :class:`VerifyResult` whose ``reason`` says why it did not match, and logs stored-data
problems (unknown scheme, malformed hash, cost over the ceiling) naming the scheme only.

Recognised stored formats (Dovecot's ``{SCHEME}`` prefixes and bare modular-crypt strings):

========================================  ===================================================
``$argon2id$``, ``{ARGON2ID}``            argon2-cffi (the current scheme)
``$argon2i$``, ``{ARGON2I}``              argon2-cffi, upgraded on the next login
``$1$``, ``{MD5-CRYPT}``                  MD5-crypt (libpass)
``$5$``, ``{SHA256-CRYPT}``               SHA256-crypt (libpass)
``$6$``, ``{SHA512-CRYPT}``               SHA512-crypt (libpass)
``$2a$ $2b$ $2y$``, ``{BLF-CRYPT}``       bcrypt (the ``bcrypt`` package)
``{SSHA}``, ``{SSHA256}``, ``{SSHA512}``  salted SHA digests (hashlib)
``{CRYPT}`` + one of the crypt forms      as that form
``{PLAIN}``, ``{CLEARTEXT}``, bare text   plaintext (unless ``allow_plaintext = false``)
========================================  ===================================================

Any other ``{SCHEME}`` or ``$id$`` string is refused, never guessed to be a plaintext password.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

from .config import HashingConfig
from .errors import HashingError

__all__ = [
    "ARGON2ID_PREFIX",
    "Calibration",
    "Hasher",
    "Scheme",
    "VerifyResult",
    "calibrate",
    "identify_scheme",
]

_log = logging.getLogger("eximauthd.hashing")

ARGON2ID_PREFIX = "{ARGON2ID}"

# Cost ceilings for the legacy schemes, for the same reason as hashing.max_*: a stored value sets
# the work done per login, so a corrupt or planted row must not be able to ask for minutes of CPU.
MAX_SHA_CRYPT_ROUNDS = 100_000
MAX_BCRYPT_COST = 14
# crypt_blowfish (and so every bcrypt hash a mail system made) uses the first 72 bytes only.
BCRYPT_MAX_BYTES = 72


class Scheme(enum.Enum):
    """A stored value's scheme as recognised by :func:`identify_scheme`."""

    ARGON2ID = "argon2id"
    ARGON2I = "argon2i"
    MD5_CRYPT = "md5-crypt"
    SHA256_CRYPT = "sha256-crypt"
    SHA512_CRYPT = "sha512-crypt"
    BCRYPT = "bcrypt"
    SSHA = "ssha"
    SSHA256 = "ssha256"
    SSHA512 = "ssha512"
    PLAIN = "plain"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :meth:`Hasher.verify`.

    ``reason`` is one of ``ok``, ``mismatch``, ``no-password-set``, ``unknown-scheme``,
    ``malformed-hash``, ``cost-over-ceiling``, ``plaintext-disabled``, ``unusable-password``.
    """

    matched: bool
    scheme: Scheme
    reason: str
    needs_rehash: bool = False


_PREFIX_RE = re.compile(r"\{([A-Za-z0-9._-]{1,32})\}")
_MCF_RE = re.compile(r"\$([A-Za-z0-9-]{1,16})\$")
_PREFIXES: dict[str, Scheme] = {
    "ARGON2ID": Scheme.ARGON2ID,
    "ARGON2I": Scheme.ARGON2I,
    "MD5-CRYPT": Scheme.MD5_CRYPT,
    "SHA256-CRYPT": Scheme.SHA256_CRYPT,
    "SHA512-CRYPT": Scheme.SHA512_CRYPT,
    "BLF-CRYPT": Scheme.BCRYPT,
    "SSHA": Scheme.SSHA,
    "SSHA256": Scheme.SSHA256,
    "SSHA512": Scheme.SSHA512,
    "PLAIN": Scheme.PLAIN,
    "CLEARTEXT": Scheme.PLAIN,
}
_MCF_IDS: dict[str, Scheme] = {
    "argon2id": Scheme.ARGON2ID,
    "argon2i": Scheme.ARGON2I,
    "1": Scheme.MD5_CRYPT,
    "5": Scheme.SHA256_CRYPT,
    "6": Scheme.SHA512_CRYPT,
    "2a": Scheme.BCRYPT,
    "2b": Scheme.BCRYPT,
    "2y": Scheme.BCRYPT,
}
# A prefixed value must carry the matching modular-crypt form, e.g. {SHA512-CRYPT}$6$...
_MCF_FOR_PREFIX: dict[Scheme, frozenset[str]] = {
    Scheme.ARGON2ID: frozenset({"argon2id"}),
    Scheme.ARGON2I: frozenset({"argon2i"}),
    Scheme.MD5_CRYPT: frozenset({"1"}),
    Scheme.SHA256_CRYPT: frozenset({"5"}),
    Scheme.SHA512_CRYPT: frozenset({"6"}),
    Scheme.BCRYPT: frozenset({"2a", "2b", "2y"}),
}
_SSHA_DIGESTS: dict[Scheme, Callable[[bytes], hashlib._Hash]] = {
    Scheme.SSHA: hashlib.sha1,
    Scheme.SSHA256: hashlib.sha256,
    Scheme.SSHA512: hashlib.sha512,
}


def identify_scheme(stored: str) -> tuple[Scheme, str, str]:
    """Split a stored value into ``(scheme, body, label)``.

    ``body`` is what the scheme's verifier takes (the prefix removed); ``label`` names the scheme
    as found in the data (``{FOO}`` or ``$foo$``), for log lines about unknown schemes.  Pure.
    """
    prefix = _PREFIX_RE.match(stored)
    if prefix is not None:
        name = prefix.group(1).upper()
        body = stored[prefix.end():]
        label = "{" + name + "}"
        if name == "CRYPT":
            # Dovecot's {CRYPT} is "whatever crypt(3) makes of it": accept the forms we verify.
            mcf = _MCF_RE.match(body)
            if mcf is not None and mcf.group(1) in _MCF_IDS:
                return _MCF_IDS[mcf.group(1)], body, label
            return Scheme.UNKNOWN, body, label
        scheme = _PREFIXES.get(name, Scheme.UNKNOWN)
        if scheme in _MCF_FOR_PREFIX:
            mcf = _MCF_RE.match(body)
            if mcf is None or mcf.group(1) not in _MCF_FOR_PREFIX[scheme]:
                return Scheme.UNKNOWN, body, label
        return scheme, body, label
    mcf = _MCF_RE.match(stored)
    if mcf is not None:
        return _MCF_IDS.get(mcf.group(1), Scheme.UNKNOWN), stored, "$" + mcf.group(1) + "$"
    return Scheme.PLAIN, stored, "plaintext"


class Hasher:
    """Hash new passwords with argon2id and verify stored values of any supported scheme.

    Thread-safe: argon2-cffi's ``PasswordHasher`` holds only parameters.
    """

    def __init__(self, config: HashingConfig | None = None) -> None:
        self.config = config or HashingConfig()
        self._ph = argon2.PasswordHasher(
            time_cost=self.config.time_cost,
            memory_cost=self.config.memory_cost,
            parallelism=self.config.parallelism,
            hash_len=self.config.hash_len,
            salt_len=self.config.salt_len,
            type=argon2.Type.ID,
        )
        # Verified when the user does not exist, so that "no such user" costs what "wrong
        # password" costs.  Random, so it can never match.
        self._dummy = self._ph.hash(secrets.token_urlsafe(32))

    def __repr__(self) -> str:
        c = self.config
        return f"Hasher(argon2id m={c.memory_cost} t={c.time_cost} p={c.parallelism})"

    def hash(self, password: str) -> str:
        """Return a new argon2id hash of *password* (with ``{ARGON2ID}`` if so configured).

        :raises HashingError: argon2 failed (e.g. out of memory); the password is not in the text.
        """
        try:
            encoded = self._ph.hash(password)
        except argon2.exceptions.HashingError:
            raise HashingError("argon2id hashing failed") from None
        return ARGON2ID_PREFIX + encoded if self.config.dovecot_prefix else encoded

    def verify(self, stored: str | None, password: str) -> VerifyResult:
        """Check *password* against *stored*.  Never raises; see :class:`VerifyResult`."""
        if not stored:
            return VerifyResult(False, Scheme.UNKNOWN, "no-password-set")
        scheme, body, label = identify_scheme(stored)
        try:
            return self._verify_scheme(scheme, body, label, password)
        except Exception as exc:
            _log.warning("stored %s value could not be verified (%s)", scheme.value,
                         type(exc).__name__)
            return VerifyResult(False, scheme, "malformed-hash")

    def verify_dummy(self, password: str) -> None:
        """Spend the time of one argon2id verification and learn nothing."""
        with contextlib.suppress(VerificationError):
            self._ph.verify(self._dummy, password)

    def needs_rehash(self, stored: str) -> bool:
        """True unless *stored* is argon2id with exactly the configured parameters."""
        scheme, body, _ = identify_scheme(stored)
        if scheme is not Scheme.ARGON2ID:
            return True
        try:
            return self._ph.check_needs_rehash(body)
        except (InvalidHashError, ValueError):
            return True

    def _verify_scheme(self, scheme: Scheme, body: str, label: str,
                       password: str) -> VerifyResult:
        match scheme:
            case Scheme.UNKNOWN:
                # Loud on purpose: an admin must learn that some rows can never log in.
                _log.error("refusing stored password with unsupported scheme %s", label[:40])
                return VerifyResult(False, scheme, "unknown-scheme")
            case Scheme.ARGON2ID | Scheme.ARGON2I:
                return self._verify_argon2(scheme, body, password)
            case Scheme.MD5_CRYPT | Scheme.SHA256_CRYPT | Scheme.SHA512_CRYPT:
                return _verify_sha_crypt(scheme, body, password)
            case Scheme.BCRYPT:
                return _verify_bcrypt(body, password)
            case Scheme.SSHA | Scheme.SSHA256 | Scheme.SSHA512:
                return _verify_ssha(scheme, body, password)
            case Scheme.PLAIN:
                if not self.config.allow_plaintext:
                    return VerifyResult(False, scheme, "plaintext-disabled")
                ok = hmac.compare_digest(body.encode(), password.encode())
                return _result(ok, scheme, needs_rehash=True)

    def _verify_argon2(self, scheme: Scheme, body: str, password: str) -> VerifyResult:
        try:
            params = argon2.extract_parameters(body)
        except (InvalidHashError, ValueError):
            _log.warning("malformed stored %s hash", scheme.value)
            return VerifyResult(False, scheme, "malformed-hash")
        c = self.config
        if (params.memory_cost > c.max_memory_cost or params.time_cost > c.max_time_cost
                or params.parallelism > c.max_parallelism):
            _log.error("refusing stored %s hash with m=%d t=%d p=%d above the configured ceiling",
                       scheme.value, params.memory_cost, params.time_cost, params.parallelism)
            return VerifyResult(False, scheme, "cost-over-ceiling")
        try:
            self._ph.verify(body, password)
        except VerifyMismatchError:
            return VerifyResult(False, scheme, "mismatch")
        except (InvalidHashError, VerificationError):
            _log.warning("malformed stored %s hash", scheme.value)
            return VerifyResult(False, scheme, "malformed-hash")
        return VerifyResult(True, scheme, "ok", needs_rehash=self.needs_rehash(body))


def _result(ok: bool, scheme: Scheme, *, needs_rehash: bool) -> VerifyResult:
    if ok:
        return VerifyResult(True, scheme, "ok", needs_rehash=needs_rehash)
    return VerifyResult(False, scheme, "mismatch")


_SHA_CRYPT = {
    Scheme.MD5_CRYPT: md5_crypt,
    Scheme.SHA256_CRYPT: sha256_crypt,
    Scheme.SHA512_CRYPT: sha512_crypt,
}
_ROUNDS_RE = re.compile(r"\$[56]\$rounds=(\d{1,10})\$")


def _verify_sha_crypt(scheme: Scheme, body: str, password: str) -> VerifyResult:
    if "\x00" in password:
        # crypt(3) takes a C string: no stored crypt hash can be of a password with a NUL.
        return VerifyResult(False, scheme, "unusable-password")
    rounds = _ROUNDS_RE.match(body)
    if rounds is not None and int(rounds.group(1)) > MAX_SHA_CRYPT_ROUNDS:
        _log.error("refusing stored %s hash with rounds above %d", scheme.value,
                   MAX_SHA_CRYPT_ROUNDS)
        return VerifyResult(False, scheme, "cost-over-ceiling")
    ok = bool(_SHA_CRYPT[scheme].verify(password, body))
    return _result(ok, scheme, needs_rehash=True)


_BCRYPT_RE = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


def _verify_bcrypt(body: str, password: str) -> VerifyResult:
    match = _BCRYPT_RE.fullmatch(body)
    if match is None:
        _log.warning("malformed stored bcrypt hash")
        return VerifyResult(False, Scheme.BCRYPT, "malformed-hash")
    if int(match.group(1)) > MAX_BCRYPT_COST:
        _log.error("refusing stored bcrypt hash with cost above %d", MAX_BCRYPT_COST)
        return VerifyResult(False, Scheme.BCRYPT, "cost-over-ceiling")
    secret = password.encode()
    if b"\x00" in secret:
        return VerifyResult(False, Scheme.BCRYPT, "unusable-password")
    # bcrypt >= 5 raises on more than 72 bytes instead of truncating.  The stored hash was made
    # by crypt_blowfish, which used only the first 72 bytes, so that is what it can be checked
    # against; on success the full password is rehashed with argon2id, ending the truncation.
    ok = bcrypt.checkpw(secret[:BCRYPT_MAX_BYTES], body.encode("ascii"))
    return _result(ok, Scheme.BCRYPT, needs_rehash=True)


def _verify_ssha(scheme: Scheme, body: str, password: str) -> VerifyResult:
    digest = _SSHA_DIGESTS[scheme]
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        _log.warning("malformed stored %s hash", scheme.value)
        return VerifyResult(False, scheme, "malformed-hash")
    size = digest(b"").digest_size
    if len(raw) <= size:
        _log.warning("malformed stored %s hash (no salt)", scheme.value)
        return VerifyResult(False, scheme, "malformed-hash")
    expected, salt = raw[:size], raw[size:]
    ok = hmac.compare_digest(digest(password.encode() + salt).digest(), expected)
    return _result(ok, scheme, needs_rehash=True)


@dataclass(frozen=True, slots=True)
class Calibration:
    """One measured argon2id parameter set."""

    memory_cost: int
    time_cost: int
    parallelism: int
    seconds: float


def calibrate(target_seconds: float, *, max_memory_cost: int = 262144, parallelism: int = 1,
              samples: int = 3,
              clock: Callable[[], float] = time.perf_counter) -> list[Calibration]:
    """Measure argon2id on this host and return the parameter sets that fit *target_seconds*.

    Memory grows in steps from OWASP's 19 MiB to *max_memory_cost*; for each step the largest
    ``time_cost`` whose median verification time stays under the target is kept.  The last
    element is the strongest fit.  Runs for a few seconds; meant for ``eximauthd hash --calibrate``.
    """
    fits: list[Calibration] = []
    memory = 19456
    while memory <= max_memory_cost:
        best: Calibration | None = None
        for time_cost in range(1, 11):
            seconds = _median_verify_time(memory, time_cost, parallelism, samples, clock)
            if seconds > target_seconds:
                break
            best = Calibration(memory, time_cost, parallelism, seconds)
        if best is None:
            break
        fits.append(best)
        memory *= 2
    return fits


def _median_verify_time(memory: int, time_cost: int, parallelism: int, samples: int,
                        clock: Callable[[], float]) -> float:
    ph = argon2.PasswordHasher(time_cost=time_cost, memory_cost=memory, parallelism=parallelism)
    encoded = ph.hash("calibration")
    times = []
    for _ in range(samples):
        start = clock()
        ph.verify(encoded, "calibration")
        times.append(clock() - start)
    times.sort()
    return times[len(times) // 2]
