"""At most service.workers password checks run at once, and an AUTH's database half is not
held back by them: a thread waiting for MariaDB never keeps a core from hashing."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import replace

import pytest

from eximauthd.core.decision import Decision
from eximauthd.core.protocol import AuthRequest
from eximauthd.db.counters import AttemptStore, utcnow
from eximauthd.service.decider import Decider
from eximauthd.settings import ServiceConfig

from ..support import PASSWORD, config_for, decide_auth, populate, wait_for

USERS = ("alice@example.test", "bob@example.test")


@pytest.mark.parametrize("workers", [1, 2])
def test_password_checks_wait_for_a_slot_but_reservations_do_not(db_url: str,
                                                                  workers: int) -> None:
    populate(db_url)
    decider = Decider(replace(config_for(db_url), service=ServiceConfig(workers=workers)))
    check, running, most = decider.authn.check, 0, 0
    lock, release = threading.Lock(), threading.Event()

    def held_check(*args: object, **kwargs: object) -> Decision:
        # The real check, held open until the test lets it go: a spy, not a stand-in.
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(30)
        with lock:
            running -= 1
        return check(*args, **kwargs)  # type: ignore[arg-type]

    decider.authn.check = held_check  # type: ignore[method-assign]
    answers: list[Decision] = []
    requests = [AuthRequest("PLAIN", user, PASSWORD if i % 2 else f"wrong-{i}", "192.0.2.7")
                for i, user in enumerate(USERS * 3)]
    threads = [threading.Thread(target=lambda r=r: answers.append(decide_auth(decider, r)))
               for r in requests]
    try:
        for thread in threads:
            thread.start()
        # Every request reserved its check (the database half ran) while the checks wait.
        assert wait_for(lambda: running == workers and sum(
            r.failures for r in AttemptStore(decider.db).list(utcnow() - dt.timedelta(days=1))
            if r.scope == "ip") == len({(r.username, r.password) for r in requests}))
        assert most == workers
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
        decider.close()
    assert most == workers
    assert sorted(a.result.value for a in answers) == ["no"] * 3 + ["yes"] * 3
