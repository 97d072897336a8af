"""``[hashing] verify_with = "auto"``: time both argon2id libraries here and keep the faster.

Which one is faster depends on how each was built, not on eximauthd: PyNaCl's libsodium picks
AVX2/AVX-512 kernels at run time but maps fresh memory for every hash and faults it in page by
page (a third of a 19 MiB hash's time goes to the kernel), while argon2-cffi's libargon2 reuses
memory from the allocator and, from the stock wheels, runs SSE2 kernels at about half the speed;
built for this CPU (docs/passwords.md) it beats libsodium by half.  So the service measures:
a few verifications of one hash with the configured parameters, each library in turn, the
least CPU time of each.  Both give the same answers (tests/core/test_hashing_sodium.py): the
choice is one of speed only.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from ..core import sodium
from ..core.hashing import Hasher
from ..settings import ARGON2_VERIFIERS, HashingConfig

__all__ = ["LIBRARIES", "faster", "time_verifiers"]

# Timed in this order; preferred on a tie: the first, the one eximauthd is tested with by default.
LIBRARIES = ARGON2_VERIFIERS


def time_verifiers(config: HashingConfig, rounds: int = 3,
                   clock: Callable[[], float] = time.process_time) -> dict[str, float]:
    """The least CPU time of *rounds* that each library takes to refuse a wrong password for a
    hash of *config*'s parameters, in turn; only the libraries that would verify such a hash.

    CPU time of the whole process, not time on the clock: under load the service is bound by
    CPU, and libargon2 computes the lanes of ``p > 1`` on threads of its own, which makes one
    verification on idle cores finish sooner while costing more.
    """
    hashers = {library: Hasher(replace(config, verify_with=library, dovecot_prefix=False))
               for library in LIBRARIES}
    stored = hashers["argon2-cffi"].hash(secrets.token_urlsafe(16))
    libraries = LIBRARIES if sodium.verifies(stored) else ("argon2-cffi",)
    wrong = secrets.token_urlsafe(16)
    best: dict[str, float] = {}
    for _ in range(rounds):
        for library in libraries:
            started = clock()
            hashers[library].verify(stored, wrong)
            took = clock() - started
            best[library] = min(took, best.get(library, took))
    return best


def faster(seconds: Mapping[str, float]) -> str:
    """The library of *seconds* that took least; on a tie, the first of :data:`LIBRARIES`."""
    timed = [library for library in LIBRARIES if library in seconds]
    return min(timed, key=lambda library: seconds[library]) if timed else LIBRARIES[0]
