"""``[hashing] verify_with = "auto"``: the service times both argon2id libraries on the threads
that will hash and keeps the faster; checks run on those threads only.  Real libraries and a
real Decider; the clock is scripted where the choice itself is under test (no timing asserts).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from eximauthd.core import sodium
from eximauthd.core.decision import Result
from eximauthd.core.protocol import AuthRequest
from eximauthd.service.decider import Decider
from eximauthd.service.verifier import LIBRARIES, faster, time_verifiers
from eximauthd.settings import HashingConfig, ServiceConfig

from ..support import ALICE, FAST_HASHING, PASSWORD, config_for, decide_auth, populate


class Script:
    """A clock that moves by the given steps, one per reading after the first of each pair."""

    def __init__(self, took: list[float]) -> None:
        self.readings = [x for d in took for x in (0.0, d)]

    def __call__(self) -> float:
        return self.readings.pop(0)


@pytest.mark.parametrize(("seconds", "expected"), [
    ({"libsodium": 0.020, "argon2-cffi": 0.015}, "argon2-cffi"),
    ({"libsodium": 0.015, "argon2-cffi": 0.020}, "libsodium"),
    ({"libsodium": 0.015, "argon2-cffi": 0.015}, "libsodium"),  # a tie: the tested default
    ({"argon2-cffi": 0.5}, "argon2-cffi"),
    ({}, "libsodium"),
])
def test_the_faster_library_is_kept(seconds: dict[str, float], expected: str) -> None:
    assert faster(seconds) == expected


def test_each_library_keeps_its_best_round_and_they_take_turns() -> None:
    # libsodium, argon2-cffi, libsodium, argon2-cffi, ...: each round times both in turn.
    clock = Script([0.030, 0.050, 0.020, 0.040, 0.025, 0.010])
    assert time_verifiers(FAST_HASHING, rounds=3, clock=clock) == {
        "libsodium": 0.020, "argon2-cffi": 0.010}
    assert clock.readings == []


def test_a_hash_libsodium_would_not_verify_times_argon2_cffi_alone() -> None:
    """A 64-byte tag and salt make a value longer than PyNaCl takes: only argon2-cffi."""
    config = replace(FAST_HASHING, hash_len=64, salt_len=64)
    seconds = time_verifiers(config, rounds=2)
    assert list(seconds) == ["argon2-cffi"]
    assert seconds["argon2-cffi"] > 0


def test_both_libraries_are_timed_at_the_configured_parameters() -> None:
    seconds = time_verifiers(FAST_HASHING, rounds=1)
    assert set(seconds) == set(LIBRARIES)
    assert all(value > 0 for value in seconds.values())


# --- in the Decider ----------------------------------------------------------------------------

@pytest.fixture
def decider_for(db_url: str) -> Iterator[object]:
    populate(db_url)
    made: list[Decider] = []

    def make(hashing: HashingConfig, workers: int = 2) -> Decider:
        config = replace(config_for(db_url), hashing=hashing,
                         service=ServiceConfig(workers=workers))
        made.append(Decider(config))
        return made[-1]

    yield make
    for decider in made:
        decider.close()


def test_auto_is_settled_at_start_with_both_times(decider_for: object) -> None:
    decider = decider_for(replace(FAST_HASHING, verify_with="auto"))  # type: ignore[operator]
    chosen = decider.hasher.config.verify_with
    assert chosen in LIBRARIES
    assert set(decider.verifier_seconds) == set(LIBRARIES)
    assert chosen == faster(decider.verifier_seconds)
    line = decider.verifier_line
    assert line.startswith(f"argon2id verified with {chosen} (libsodium ")
    assert f" ms of CPU at m={FAST_HASHING.memory_cost} t={FAST_HASHING.time_cost} p=1)" in line


@pytest.mark.parametrize("verify_with", ["libsodium", "argon2-cffi"])
def test_a_named_library_is_used_as_named_and_not_timed(
        decider_for: object, monkeypatch: pytest.MonkeyPatch, verify_with: str) -> None:
    calls: list[str] = []
    real = sodium.verify_argon2id
    monkeypatch.setattr(sodium, "verify_argon2id",
                        lambda encoded, password: calls.append(encoded) or real(encoded, password))
    decider = decider_for(replace(FAST_HASHING, verify_with=verify_with))  # type: ignore[operator]
    assert decider.verifier_seconds == {}
    assert decider.verifier_line == f"argon2id verified with {verify_with} (as configured)"
    assert decider.hasher.config.verify_with == verify_with
    answer = decide_auth(decider, AuthRequest("PLAIN", ALICE, PASSWORD, "192.0.2.7"))
    assert answer.result is Result.YES
    assert bool(calls) is (verify_with == "libsodium")


def test_password_checks_run_on_the_argon2_threads_only(decider_for: object) -> None:
    """No more threads than service.workers ever hold argon2's memory."""
    decider = decider_for(FAST_HASHING, workers=2)  # type: ignore[operator]
    check, names = decider.authn.check, set()

    def spy(*args: object, **kwargs: object) -> object:
        names.add(threading.current_thread().name)
        return check(*args, **kwargs)  # type: ignore[arg-type]

    decider.authn.check = spy  # type: ignore[method-assign]
    requests = [AuthRequest("PLAIN", ALICE, PASSWORD if i % 2 else "wrong", f"192.0.2.{i}")
                for i in range(1, 9)]
    threads = [threading.Thread(target=decide_auth, args=(decider, r)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert names
    assert all(name.startswith("eximauthd-argon2") for name in names)
    assert len(names) <= 2


def test_serve_says_which_library_it_chose_once_it_listens(sqlite_url: str) -> None:
    from .. import servicekit as kit  # noqa: PLC0415

    populate(sqlite_url)
    with kit.running(sqlite_url) as served:
        lines = served.log().splitlines()
    [chosen] = [i for i, line in enumerate(lines) if "argon2id verified with " in line]
    [serving] = [i for i, line in enumerate(lines) if " serving socket=" in line]
    assert chosen == serving - 1
    assert " info eximauthd.serve: argon2id verified with " in lines[chosen]
    assert " ms of CPU at m=8 t=1 p=1)" in lines[chosen]
