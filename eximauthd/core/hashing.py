"""Password hashes: argon2id for everything new, read-only support for legacy schemes.

:class:`Hasher` never raises for a wrong password or a bad stored value: :meth:`Hasher.verify`
returns a :class:`VerifyResult` whose ``reason`` says why it did not match, and logs stored-data
problems (unknown scheme, malformed hash, cost over the ceiling) naming the scheme only.

Recognised stored formats (Dovecot's ``{SCHEME}`` prefixes and bare modular-crypt strings):

========================================  ===================================================
``$argon2id$``, ``{ARGON2ID}``            libsodium or argon2-cffi (the current scheme)
``$argon2i$``, ``{ARGON2I}``              argon2-cffi, upgraded on the next login
``$1$``, ``{MD5-CRYPT}``                  MD5-crypt (libpass)
``$5$``, ``{SHA256-CRYPT}``               SHA256-crypt (libpass)
``$6$``, ``{SHA512-CRYPT}``               SHA512-crypt (libpass)
``$2a$ $2b$ $2y$``, ``{BLF-CRYPT}``       bcrypt (the ``bcrypt`` package)
``{SSHA}``, ``{SSHA256}``, ``{SSHA512}``  salted SHA digests (hashlib)
``{CRYPT}`` + one of the crypt forms      as that form (DES crypt included)
``{PLAIN}``, ``{CLEARTEXT}``              plaintext (unless ``allow_plaintext = false``)
bare value (no prefix, no ``$id$``)       what ``[legacy] password_scheme`` says, see below
========================================  ===================================================

Any other ``{SCHEME}`` or ``$id$`` string is refused, never guessed to be a plaintext password.

A bare value is plaintext only when it cannot be a hash.  Under ``password_scheme = "auto"``
(the default) a bare value shaped like a hash (hex or base64 of a digest, a salted digest, a
DES or BSDi crypt string, MySQL's ``PASSWORD()``/``OLD_PASSWORD()``, a Django or Werkzeug
hash; see :func:`hash_shape`) is refused: taking it as plaintext would let anyone who read the
hash log in with the hash itself.  An explicit scheme makes every
bare value a hash of that scheme, and ``plain`` makes every bare value plaintext.

argon2id goes through libsodium (:mod:`~eximauthd.core.sodium`, faster kernels) where it
gives argon2-cffi's answer: verification of the values of :func:`~eximauthd.core.sodium.verifies`'s
shape, hashing when the configured parameters are what libsodium writes (p=1, 16-byte salt,
32-byte tag).  argon2-cffi does the rest: argon2i, other shapes, every refusal's reason; and
all verification under ``[hashing] verify_with = "argon2-cffi"`` (faster when its bindings
were built for this CPU: libsodium maps fresh memory for every hash).

This module owns the argon2id side and the reading of a stored value's scheme; the shape rule
is :mod:`~eximauthd.core.shapes`, the legacy verifiers and their ceilings
:mod:`~eximauthd.core.legacy`, and the vocabulary they share :mod:`~eximauthd.core.schemes`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..errors import ConfigError, HashingError
from ..settings import HashingConfig
from . import sodium
from .legacy import (
    _HEX_DIGESTS,
    BCRYPT_MAX_BYTES,
    MAX_BCRYPT_COST,
    MAX_SHA_CRYPT_ROUNDS,
    _verify_bcrypt,
    _verify_des_crypt,
    _verify_hex_digest,
    _verify_mysql323,
    _verify_mysql_native,
    _verify_sha_crypt,
    _verify_ssha,
    mysql323,
)
from .schemes import _MCF_RE, _PREFIX_RE, Scheme, VerifyResult, _result
from .shapes import _DES_CRYPT_RE, _SHAPE_KINDS, hash_shape

# Scheme, VerifyResult, hash_shape, mysql323 and the legacy ceilings are re-exported: they were
# defined here before the split into schemes, shapes and legacy, and callers import them here.
__all__ = [
    "ARGON2ID_PREFIX",
    "BCRYPT_MAX_BYTES",
    "MAX_BCRYPT_COST",
    "MAX_SHA_CRYPT_ROUNDS",
    "Calibration",
    "Hasher",
    "Scheme",
    "VerifyResult",
    "bare_scheme",
    "calibrate",
    "hash_shape",
    "identify_scheme",
    "mysql323",
]

_log = logging.getLogger("eximauthd.hashing")

ARGON2ID_PREFIX = "{ARGON2ID}"


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

# [legacy] password_scheme: what a bare stored value is.  None: decided by its shape ("auto").
_BARE_SCHEMES: dict[str, Scheme | None] = {
    "auto": None,
    "plain": Scheme.PLAIN,
    **{s.value: s for s in (*_HEX_DIGESTS, Scheme.MYSQL_NATIVE, Scheme.MYSQL323_HEX,
                            Scheme.DES_CRYPT)},
}


def bare_scheme(name: str) -> Scheme | None:
    """The scheme of bare values under ``[legacy] password_scheme = name``; None for ``auto``.

    :raises ConfigError: not a known name (the configuration validates it first).
    """
    try:
        return _BARE_SCHEMES[name]
    except KeyError:
        raise ConfigError(f"legacy.password_scheme: unknown scheme {name[:40]!r}") from None


def identify_scheme(stored: str, bare: Scheme | None = None) -> tuple[Scheme, str, str]:
    """Split a stored value into ``(scheme, body, label)``.

    ``body`` is what the scheme's verifier takes (the prefix removed); ``label`` names the scheme
    as found in the data (``{FOO}`` or ``$foo$``), for log lines about unknown schemes.  A value
    with neither is of scheme *bare* (see :func:`bare_scheme`) if it has that scheme's shape;
    otherwise it is ``UNKNOWN``, with the kind as label when :func:`hash_shape` knows its shape,
    except that with *bare* None ("auto") a value of no known shape is plaintext.  Pure.
    """
    prefix = _PREFIX_RE.match(stored)
    if prefix is not None:
        name = prefix.group(1).upper()
        body = stored[prefix.end():]
        label = "{" + name + "}"
        if name == "CRYPT":
            # Dovecot's {CRYPT} is "whatever crypt(3) makes of it": accept the forms we verify,
            # the traditional DES crypt (Dovecot's default for CRYPT) included.
            mcf = _MCF_RE.match(body)
            if mcf is not None and mcf.group(1) in _MCF_IDS:
                return _MCF_IDS[mcf.group(1)], body, label
            if _DES_CRYPT_RE.fullmatch(body):
                return Scheme.DES_CRYPT, body, label
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
    if bare is Scheme.PLAIN:
        return bare, stored, "plaintext"
    shape = hash_shape(stored)
    if bare is not None and shape == bare.value:
        return bare, stored, bare.value
    if shape is not None:
        # Never plaintext: that would make the hash itself the password (pass-the-hash).
        return Scheme.UNKNOWN, stored, shape
    if bare is not None:
        # The column was declared to hold hashes: a value of no hash shape (a leftover
        # plaintext?) is neither compared as text nor as a hash.
        return Scheme.UNKNOWN, stored, f"bare value, not {bare.value}"
    return Scheme.PLAIN, stored, "plaintext"


class Hasher:
    """Hash new passwords with argon2id and verify stored values of any supported scheme.

    *password_scheme* is ``[legacy] password_scheme``: what a bare stored value is (see
    :func:`bare_scheme`).  Thread-safe: argon2-cffi's ``PasswordHasher`` holds only parameters,
    and libsodium's calls share nothing.
    """

    def __init__(self, config: HashingConfig | None = None, *,
                 password_scheme: str = "auto") -> None:  # noqa: S107 -- a scheme name
        self.config = config or HashingConfig()
        self.bare = bare_scheme(password_scheme)
        self._ph = argon2.PasswordHasher(
            time_cost=self.config.time_cost,
            memory_cost=self.config.memory_cost,
            parallelism=self.config.parallelism,
            hash_len=self.config.hash_len,
            salt_len=self.config.salt_len,
            type=argon2.Type.ID,
        )
        c = self.config
        self._sodium_hash = sodium.hashes(c.memory_cost, c.time_cost, c.parallelism,
                                          c.salt_len, c.hash_len)
        # "auto" is libsodium here: `serve` measures and names the faster one in its config.
        self._sodium_verify = c.verify_with != "argon2-cffi"
        # Verified when the user does not exist, so that "no such user" costs what "wrong
        # password" costs: made and checked as a real hash of these parameters is, by the
        # same library.  Random, so it can never match.
        self._dummy = self._hash(secrets.token_urlsafe(32))

    def __repr__(self) -> str:
        c = self.config
        return f"Hasher(argon2id m={c.memory_cost} t={c.time_cost} p={c.parallelism})"

    def hash(self, password: str) -> str:
        """Return a new argon2id hash of *password* (with ``{ARGON2ID}`` if so configured).

        :raises HashingError: argon2 failed (e.g. out of memory); the password is not in the text.
        """
        encoded = self._hash(password)
        return ARGON2ID_PREFIX + encoded if self.config.dovecot_prefix else encoded

    def _hash(self, password: str) -> str:
        try:
            if self._sodium_hash:
                return sodium.hash_argon2id(password, self.config.memory_cost,
                                            self.config.time_cost)
            return self._ph.hash(password)
        except (argon2.exceptions.HashingError, RuntimeError):
            raise HashingError("argon2id hashing failed") from None

    def verify(self, stored: str | None, password: str) -> VerifyResult:
        """Check *password* against *stored*.  Never raises; see :class:`VerifyResult`."""
        if not stored:
            return VerifyResult(False, Scheme.UNKNOWN, "no-password-set")
        scheme, body, label = identify_scheme(stored, self.bare)
        try:
            return self._verify_scheme(scheme, body, label, password)
        except Exception as exc:
            _log.warning("stored %s value could not be verified (%s)", scheme.value,
                         type(exc).__name__)
            return VerifyResult(False, scheme, "malformed-hash")

    def verify_dummy(self, password: str) -> None:
        """Spend the time of one argon2id verification and learn nothing."""
        with contextlib.suppress(VerificationError):
            self._check_argon2(self._dummy, password)

    def needs_rehash(self, stored: str) -> bool:
        """True unless *stored* is argon2id with exactly the configured parameters."""
        scheme, body, _ = identify_scheme(stored, self.bare)
        if scheme is not Scheme.ARGON2ID:
            return True
        try:
            return self._ph.check_needs_rehash(body)
        except (InvalidHashError, ValueError):
            return True

    def _verify_scheme(self, scheme: Scheme, body: str, label: str,
                       password: str) -> VerifyResult:
        match scheme:
            case Scheme.UNKNOWN if label in _SHAPE_KINDS:
                # A bare hash under "auto": the caller logs it, once per account.
                return VerifyResult(False, scheme, "unknown-scheme", looks_like=label)
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
            case Scheme.MD5_HEX | Scheme.SHA1_HEX | Scheme.SHA256_HEX | Scheme.SHA512_HEX:
                return _verify_hex_digest(scheme, body, password)
            case Scheme.MYSQL_NATIVE:
                return _verify_mysql_native(body, password)
            case Scheme.MYSQL323_HEX:
                return _verify_mysql323(body, password)
            case Scheme.DES_CRYPT:
                return _verify_des_crypt(body, password)
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
            self._check_argon2(body, password)
        except VerifyMismatchError:
            return VerifyResult(False, scheme, "mismatch")
        except (InvalidHashError, VerificationError):
            _log.warning("malformed stored %s hash", scheme.value)
            return VerifyResult(False, scheme, "malformed-hash")
        return VerifyResult(True, scheme, "ok", needs_rehash=self.needs_rehash(body))

    def _check_argon2(self, body: str, password: str) -> None:
        """Return if *password* matches *body*, raise argon2-cffi's VerifyMismatchError if not
        (or its other errors for a value it cannot read).  Costs not checked here."""
        if self._sodium_verify and sodium.verifies(body):
            if not sodium.verify_argon2id(body, password):
                raise VerifyMismatchError("libsodium: no match")
            return
        self._ph.verify(body, password)


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
