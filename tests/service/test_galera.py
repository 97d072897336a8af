"""Many MX hosts on one MariaDB Galera cluster: real ``eximauthd serve`` instances, each on its
own node of a real 3-node cluster on loopback (tests/galerakit.py).

One cluster serves the whole module (it takes ~20 s to start); each test makes its own
database on it.  The tests that kill nodes restore the cluster before they end, and the one that
stops the whole cluster comes last.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from .. import servicekit as kit
from ..galerakit import GaleraCluster, galera_cluster
from ..servicekit import relay
from ..support import ALICE, BOB, PASSWORD, SYNC_MS, populate, rate_env, wait_for

pytestmark = pytest.mark.galera

CAROL = "carol@example.test"  # disabled by populate()


@pytest.fixture(scope="module")
def cluster() -> Iterator[GaleraCluster]:
    with galera_cluster() as started:
        yield started


@pytest.fixture
def database(cluster: GaleraCluster) -> str:
    """A fresh database on the cluster, with populate()'s accounts; its name."""
    for index, node in enumerate(cluster.nodes):
        if not node.running():  # a test before this one failed half-way
            cluster.start_node(index)
    cluster.wait_size(len(cluster.nodes))
    name = f"eximauthd_galera_{secrets.token_hex(4)}"
    cluster.create_database(name)
    populate(cluster.nodes[0].url(name))
    return name


def _serve(cluster: GaleraCluster, name: str, node: int, *failover: int,
           env: dict[str, str] | None = None) -> contextlib.AbstractContextManager[kit.Served]:
    """An instance on node *node*, failing over to the *failover* nodes in that order."""
    extra = {"EXIMAUTHD_DATABASE_FAILOVER_CHECK_SECONDS": "1"} | (env or {})
    if failover:
        extra["EXIMAUTHD_DATABASE_FAILOVER_URLS"] = ",".join(
            cluster.nodes[i].url(name) for i in failover)
    return kit.running(cluster.nodes[node].url(name), extra_env=extra)


def _auth(served: kit.Served, user: str, password: str, ip: str = "192.0.2.10") -> bytes:
    return served.ask(kit.auth_line(user, password, ip))


def _ready(served: kit.Served) -> dict[str, object]:
    try:
        with urllib.request.urlopen(served.http_url + "/readyz", timeout=5) as resp:
            body: dict[str, object] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return body


def _node_in_use(served: kit.Served) -> int | None:
    node = _ready(served).get("database_node")
    if not isinstance(node, dict) or not node.get("usable"):
        return None
    index = node.get("index")
    return index if isinstance(index, int) else None


def _cli(served: kit.Served, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eximauthd", *args], input=stdin, text=True,
                          capture_output=True, env=served.env, timeout=60, check=False)


# --- brute force and account changes across nodes --------------------------------------------

def test_a_spray_over_two_instances_on_two_nodes_is_throttled_on_both(
        cluster: GaleraCluster, database: str) -> None:
    """Wrong AUTHs spread over two MX on two nodes add up: both throttle, none defers."""
    env = {"EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_USER": "4"}
    with _serve(cluster, database, 0, env=env) as mx1, \
            _serve(cluster, database, 1, env=env) as mx2:
        answers = [_auth((mx1, mx2)[i % 2], ALICE, f"guess-{i}", f"198.51.100.{i + 1}")
                   for i in range(10)]
        assert answers == [b"no\n"] * 10
        # The right password, from a new network, on either MX: the user is locked out.
        assert _auth(mx1, ALICE, PASSWORD, "203.0.113.7") == b"no\n"
        assert _auth(mx2, ALICE, PASSWORD, "203.0.113.8") == b"no\n"
        assert "reason=throttled-user" in mx1.log()
        assert "reason=throttled-user" in mx2.log()
        assert _auth(mx2, BOB, PASSWORD, "203.0.113.8") == b"yes\n"


def test_a_password_change_on_one_node_holds_at_once_on_another(
        cluster: GaleraCluster, database: str) -> None:
    """`user passwd` and `user disable` through node 0 hold on the next AUTH on node 1."""
    with _serve(cluster, database, 0) as mx1, _serve(cluster, database, 1) as mx2:
        assert _auth(mx2, BOB, PASSWORD) == b"yes\n"
        changed = _cli(mx1, "user", "passwd", BOB, "--password-stdin", stdin="brand-new-pw\n")
        assert changed.returncode == 0, changed.stderr
        assert _auth(mx2, BOB, PASSWORD) == b"no\n"
        assert _auth(mx2, BOB, "brand-new-pw") == b"yes\n"
        disabled = _cli(mx1, "user", "disable", BOB)
        assert disabled.returncode == 0, disabled.stderr
        assert _auth(mx2, BOB, "brand-new-pw") == b"no\n"


# --- rate limits across instances ---------------------------------------------------------

@pytest.mark.parametrize("instances", [2, 3])
def test_a_user_limit_holds_across_instances(cluster: GaleraCluster, database: str,
                                             instances: int) -> None:
    """The issue's case: 3/4 of the limit on one MX, then as much on each other one, one MX at
    a time: together they admit exactly the limit, not N times it."""
    limit, each = 12, 9
    env = rate_env(recipients=f"{limit}/1h,1000/1d")
    with contextlib.ExitStack() as stack:
        mxs = [stack.enter_context(_serve(cluster, database, i, env=env))
               for i in range(instances)]
        admitted = []
        for mx in mxs:
            answers = [relay(mx, ALICE) for _ in range(each)]
            assert set(answers) <= {b"yes\n", b"defer rate-limit-recipients-1h\n"}, answers
            admitted.append(answers.count(b"yes\n"))
            # Longer than a sync: the next MX's first RELAY may not see counts unwritten here.
            time.sleep(5 * SYNC_MS / 1000)
        assert admitted == [each, limit - each] + [0] * (instances - 2)
        assert relay(mxs[0], BOB) == b"yes\n"
