"""argon2id verifications per second: argon2-cffi against libsodium (PyNaCl), side by side.

Run from the repository root with the project's venv::

    .venv/bin/python bench/bench_hashing.py            # 9 rounds, about 5 minutes
    .venv/bin/python bench/bench_hashing.py --quick    # 3 short rounds, about 1 minute

In-process, no database, no service.  For each argon2id profile (eximauthd's default
m=19456 t=2 p=1, argon2-cffi's default m=65536 t=3 p=4) and each number of threads (1, 2), three
variants verify the same stored strings (made by argon2-cffi, 16-byte salt, 32-byte tag) with
the right password, back to back on every thread for a window:

* ``argon2-cffi``: ``argon2.PasswordHasher.verify`` (the bundled libargon2, threads = p);
* ``libsodium``: ``nacl.pwhash.argon2id.verify`` (PyNaCl's bundled libsodium: one thread per
  verification, kernel picked at run time);
* ``eximauthd``: ``Hasher.verify``, which routes these strings to libsodium
  (eximauthd/core/sodium.py); the difference to ``libsodium`` is its parsing and ceiling check.

The machine is shared and noisy: every (variant, threads) pair runs one window per round (the
order rotates every round) and every result is the median of per-round ratios, with the
smallest and largest.  ``cost`` is the same ratio from CPU time alone (this process's
user+system CPU per verification), which moves much less with background load.
``2thr/1thr`` is a variant's 2-thread rate over its 1-thread rate: near 2 on an otherwise idle
machine when the library releases the GIL.  ``cores`` is CPU seconds over wall seconds during
the window: above 1.0 for libsodium (one thread per verification) only if two verifications
ran at once, i.e. the call released the GIL; other work on the machine holds it down.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

import argon2
import nacl.exceptions
import nacl.pwhash.argon2id

from eximauthd.core.hashing import Hasher
from eximauthd.settings import HashingConfig

PASSWORD = "correct horse battery staple"  # noqa: S105 -- the bench's own hashes
NCPU = os.cpu_count() or 1


def log(message: str) -> None:
    """Progress goes to stderr so that stdout is only the result table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Profile:
    label: str
    memory_cost: int
    time_cost: int
    parallelism: int

    @property
    def params(self) -> str:
        return f"m={self.memory_cost} t={self.time_cost} p={self.parallelism}"

    def config(self) -> HashingConfig:
        return HashingConfig(memory_cost=self.memory_cost, time_cost=self.time_cost,
                             parallelism=self.parallelism)


PROFILES = (Profile("eximauthd default", 19456, 2, 1),
            Profile("argon2-cffi default", 65536, 3, 4))


@dataclass(frozen=True)
class Settings:
    rounds: int
    window: dict[int, float]  # seconds per variant and round, by memory cost
    hashes: int


FULL = Settings(rounds=9, window={19456: 1.5, 65536: 3.0}, hashes=8)
QUICK = Settings(rounds=3, window={19456: 0.8, 65536: 1.5}, hashes=4)


def variants(profile: Profile) -> dict[str, Callable[[str], bool]]:
    ph = argon2.PasswordHasher(time_cost=profile.time_cost, memory_cost=profile.memory_cost,
                               parallelism=profile.parallelism, type=argon2.Type.ID)
    hasher = Hasher(profile.config())
    password = PASSWORD.encode()

    def sodium(stored: str) -> bool:
        try:
            return nacl.pwhash.argon2id.verify(stored.encode(), password)
        except nacl.exceptions.InvalidkeyError:
            return False

    return {
        "argon2-cffi": lambda stored: ph.verify(stored, PASSWORD),
        "libsodium": sodium,
        "eximauthd": lambda stored: hasher.verify(stored, PASSWORD).matched,
    }


@dataclass(frozen=True)
class Window:
    rate: float        # verifications per second, all threads
    cpu_ms: float      # process CPU per verification
    count: int
    errors: int


def run_window(call: Callable[[str], bool], stored: Sequence[str], threads: int,
               seconds: float) -> Window:
    """Every thread verifies back to back for *seconds*; the last call may overrun, and the
    rate is completions over the span from the common start to the last end."""
    counts = [0] * threads
    errors = [0] * threads
    ends = [0.0] * threads
    barrier = threading.Barrier(threads + 1)
    start: list[float] = []

    def worker(index: int) -> None:
        barrier.wait()
        deadline = start[0] + seconds
        i = index
        while time.perf_counter() < deadline:
            if call(stored[i % len(stored)]):
                counts[index] += 1
            else:
                errors[index] += 1
            i += 1
        ends[index] = time.perf_counter()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    cpu0 = time.process_time()
    start.append(time.perf_counter())
    barrier.wait()
    for thread in pool:
        thread.join()
    cpu = time.process_time() - cpu0
    done = sum(counts) + sum(errors)
    span = max(ends) - start[0]
    return Window(sum(counts) / span, cpu * 1000 / max(done, 1), sum(counts), sum(errors))


def ratio_text(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}..{max(values):.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 short rounds")
    parser.add_argument("--rounds", type=int, help="rounds (default 9, or 3 with --quick)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    rounds = args.rounds or settings.rounds

    print(f"argon2id verify/s: argon2-cffi vs libsodium ({'quick' if args.quick else 'full'}), "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"  nproc={NCPU}  python {platform.python_version()}  argon2-cffi "
          f"{metadata.version('argon2-cffi')} (bindings {metadata.version('argon2-cffi-bindings')})"
          f"  pynacl {metadata.version('pynacl')} (bundled libsodium)")
    print(f"  {rounds} rounds; per round each variant runs one window, the order rotating.")
    print("  rate: median verify/s over rounds.  cpu ms: median CPU ms per verification.")
    print("  cores: median CPU s / wall s of the window (this process).")
    ratios: list[tuple[str, str, str]] = []
    for profile in PROFILES:
        maker = argon2.PasswordHasher(time_cost=profile.time_cost,
                                      memory_cost=profile.memory_cost,
                                      parallelism=profile.parallelism, type=argon2.Type.ID)
        stored = [maker.hash(PASSWORD) for _ in range(settings.hashes)]
        calls = variants(profile)
        for name, call in calls.items():
            if not all(call(s) for s in stored):
                raise SystemExit(f"{name} does not verify the {profile.params} hashes")
        window = settings.window[profile.memory_cost]
        rates: dict[tuple[str, int], list[float]] = {}
        cpus: dict[tuple[str, int], list[float]] = {}
        totals: dict[tuple[str, int], tuple[int, int]] = {}
        combos = [(name, threads) for threads in (1, 2) for name in calls]
        log(f"{profile.params}: {rounds} rounds x {window} s x {len(combos)} "
            "(variant, threads)")
        for r in range(rounds):
            for name, threads in combos[r % len(combos):] + combos[:r % len(combos)]:
                result = run_window(calls[name], stored, threads, window)
                rates.setdefault((name, threads), []).append(result.rate)
                cpus.setdefault((name, threads), []).append(result.cpu_ms)
                n, e = totals.get((name, threads), (0, 0))
                totals[name, threads] = (n + result.count, e + result.errors)
        print(f"\n[{profile.params}] {profile.label}, {window} s windows")
        print(f"  {'variant':<14}{'threads':>8}{'rate':>9}{'cpu ms':>9}{'cores':>7}{'n':>7}"
              f"{'err':>5}")
        for threads in (1, 2):
            for name in calls:
                key = (name, threads)
                cores = statistics.median(
                    r * c / 1000 for r, c in zip(rates[key], cpus[key], strict=True))
                print(f"  {name:<14}{threads:>8}{statistics.median(rates[key]):>9.2f}"
                      f"{statistics.median(cpus[key]):>9.2f}{cores:>7.2f}{totals[key][0]:>7}"
                      f"{totals[key][1]:>5}")
        for threads in (1, 2):
            for name in ("libsodium", "eximauthd"):
                per_round = [a / b for a, b in zip(rates[name, threads],
                                                   rates["argon2-cffi", threads], strict=True)]
                cost = [b / a for a, b in zip(cpus[name, threads],
                                              cpus["argon2-cffi", threads], strict=True)]
                ratios.append((f"{profile.params}, {threads} thr",
                               f"{name} / argon2-cffi", f"{ratio_text(per_round)}  cost "
                               f"{statistics.median(cost):.3f}"))
        for name in calls:
            scale = [a / b for a, b in zip(rates[name, 2], rates[name, 1], strict=True)]
            ratios.append((profile.params, f"{name} 2thr/1thr", ratio_text(scale)))
    print("\nRATIOS: median of the per-round ratios [min..max]; cost = the same from CPU per "
          "verification")
    for where, what, value in ratios:
        print(f"  {where:<24}{what:<26}{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
