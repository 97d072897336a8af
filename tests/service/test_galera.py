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
from ..support import ALICE, BOB, PASSWORD, populate, rate_env, wait_for

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


def _metrics(served: kit.Served) -> str:
    with urllib.request.urlopen(served.http_url + "/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    return text


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
    """`user passwd`, `user disable` and `grant remove` through node 0 hold on the next AUTH
    or RELAY through node 1 (wsrep_sync_wait)."""
    with _serve(cluster, database, 0) as mx1, _serve(cluster, database, 1) as mx2:
        spoof = kit.relay_line(ALICE, "boss@partner.test", "x@remote.test")
        assert mx2.ask(spoof) == b"yes\n"
        removed = _cli(mx1, "grant", "remove", ALICE, "@partner.test")
        assert removed.returncode == 0, removed.stderr
        assert mx2.ask(spoof) == b"no\n"
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
        admitted: list[int] = []
        for index, mx in enumerate(mxs):
            answers = [relay(mx, ALICE) for _ in range(each)]
            assert set(answers) <= {b"yes\n", b"defer rate-limit-recipients-1h\n"}, answers
            admitted.append(answers.count(b"yes\n"))
            # The next MX's first RELAY reads the totals afresh (and its node waits for the
            # cluster's last commit), but sees only what this MX's sync has committed by then:
            # wait for that commit, not for a guess at how long a loaded cluster takes.
            assert _committed(cluster, database, index, sum(admitted)), admitted
        assert admitted == [each, limit - each] + [0] * (instances - 2)
        assert relay(mxs[0], BOB) == b"yes\n"


def _committed(cluster: GaleraCluster, database: str, node: int, total: int) -> bool:
    """Whether *node* has alice's 1h recipients committed at *total* (waiting up to 30 s)."""
    return wait_for(lambda: _recipients_counted(cluster, database, node) == total, timeout=30)


def _recipients_counted(cluster: GaleraCluster, database: str, node: int) -> int:
    """alice's recipients in her 1h windows, as committed on *node*."""
    with contextlib.closing(cluster.nodes[node].connect()) as conn, conn.cursor() as cur:
        conn.select_db(database)
        cur.execute("SELECT COALESCE(SUM(`count`), 0) FROM eximauthd_rate_counters "
                    "WHERE address = %s AND kind = 'recipients' AND window_seconds = 3600",
                    (ALICE,))
        row = cur.fetchone()
    return int(row[0]) if row else 0


# --- failover -------------------------------------------------------------------------------

_OK = {b"yes\n"}
_NO = {b"no\n"}
_DEFER = b"defer database-unavailable\n"


@dataclass
class Load:
    """Exim's traffic on some instances, from a thread, every answer kept with its time.

    Each round asks: alice with her password (yes, or defer while no node serves), a wrong
    password and the disabled carol (no, or defer), and alice sending as someone else (no, or
    defer).  Whatever happens to the nodes, none of the last three may ever be yes.
    """

    instances: list[kit.Served]
    answers: list[tuple[float, int, str, bytes]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        asks = {
            "right": lambda i: kit.auth_line(ALICE, PASSWORD, f"192.0.2.{i + 1}"),
            "wrong": lambda i: kit.auth_line(BOB, "not-bobs-password", f"198.51.100.{i + 1}"),
            "disabled": lambda i: kit.auth_line(CAROL, PASSWORD, f"192.0.2.{i + 1}"),
            "spoofed": lambda i: kit.relay_line(ALICE, "ceo@elsewhere.test", "x@remote.test"),
        }
        while not self.stop.is_set():
            for index, served in enumerate(self.instances):
                for kind, line in asks.items():
                    try:
                        answer = served.ask(line(index), timeout=15)
                    except OSError as exc:  # the instance itself stopped answering
                        self.errors.append(f"{index} {kind}: {exc!r}")
                        answer = b""
                    self.answers.append((time.monotonic(), index, kind, answer))
            time.sleep(0.02)

    def wrong_yes(self) -> list[tuple[float, int, str, bytes]]:
        """Answers to the three that must never pass that were not no or a defer."""
        return [a for a in self.answers
                if a[2] != "right" and a[3] not in _NO and not a[3].startswith(b"defer ")]

    def wrong_no(self) -> list[tuple[float, int, str, bytes]]:
        """The right password answered anything but yes or a defer (a 535 for a real user)."""
        return [a for a in self.answers
                if a[2] == "right" and a[3] not in _OK and not a[3].startswith(b"defer ")]

    def first_yes(self, index: int, after: float) -> float | None:
        return next((t for t, i, kind, answer in self.answers
                     if i == index and kind == "right" and answer in _OK and t > after), None)

    def first_defer(self, index: int, after: float) -> float:
        return next((t for t, i, kind, answer in self.answers
                     if i == index and kind == "right" and answer == _DEFER and t > after),
                    after)

    def counts(self, index: int, after: float) -> Counter[bytes]:
        return Counter(a for t, i, kind, a in self.answers
                       if i == index and kind == "right" and t > after)


@contextlib.contextmanager
def loaded(*instances: kit.Served) -> Iterator[Load]:
    load = Load(list(instances))
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        thread.join(60)


_FAILOVER_ENV = {"EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_IP": "100000",
                 "EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_USER": "100000"}


def test_an_instance_fails_over_when_its_node_is_killed_and_returns_when_it_rejoins(
        cluster: GaleraCluster, database: str) -> None:
    """SIGKILL of an instance's node under load: it moves to its failover node within
    seconds, the other instance keeps answering, nothing wrong is ever yes; when the node
    has rejoined, the instance goes back to it without a restart."""
    with _serve(cluster, database, 1, 2, env=_FAILOVER_ENV) as mx1, \
            _serve(cluster, database, 0, env=_FAILOVER_ENV) as mx2:
        with loaded(mx1, mx2) as load:
            assert wait_for(lambda: load.first_yes(0, 0) and load.first_yes(1, 0))
            assert _node_in_use(mx1) == 0
            killed = time.monotonic()
            cluster.kill(1)
            assert wait_for(lambda: load.first_yes(0, killed + 0.5), timeout=60), \
                load.counts(0, killed)
            assert _node_in_use(mx1) == 1
            assert wait_for(lambda: "eximauthd_database_node 1.0" in _metrics(mx1))
            # From SIGKILL to the first yes after the first defer (a request in flight at the
            # kill may still have been answered by the old node).
            failed_over = (load.first_yes(0, load.first_defer(0, killed)) or 0) - killed
            assert wait_for(lambda: load.first_yes(1, killed + 0.5), timeout=60), \
                load.counts(1, killed)
            other = (load.first_yes(1, killed + 0.5) or 0) - killed

            restarted = time.monotonic()
            cluster.start_node(1)
            synced = time.monotonic()
            assert wait_for(lambda: _node_in_use(mx1) == 0, timeout=60)
            back = time.monotonic()
            returned = back - synced
            assert wait_for(lambda: load.first_yes(0, back) is not None)
        assert load.wrong_yes() == []
        assert load.wrong_no() == []
        assert load.errors == []
        log = mx1.log()
        assert "database node 1 in use" in log
        assert "database node 0 in use" in log
        # The numbers docs/scaling.md quotes (pytest -s shows them).
        print(f"\nfailover: first yes on the failover node {failed_over:.1f} s after SIGKILL; "
              f"other instance's first yes after {other:.1f} s; node rejoined in "
              f"{synced - restarted:.1f} s, instance back on it {returned:.1f} s later; "
              f"answers of the failing-over instance: {dict(load.counts(0, killed))}")


@pytest.mark.parametrize(("variable", "off", "on"), [
    ("wsrep_desync", "OFF", "ON"),   # the node leaves Synced (Donor/Desynced)
    ("read_only", "0", "1"),
])
def test_an_instance_leaves_a_node_not_synced_or_read_only_and_comes_back(
        cluster: GaleraCluster, database: str, variable: str, off: str, on: str) -> None:
    """A node that answers but is not Synced, or is read-only, is left for the failover node
    at the next check; when it is usable again the instance returns to it."""
    node = cluster.nodes[2]

    def set_global(value: str) -> None:
        with contextlib.closing(node.connect()) as conn, conn.cursor() as cur:
            # The variable comes from the parameters above, never from input.
            cur.execute(f"SET GLOBAL {variable} = {value}")

    with _serve(cluster, database, 2, 0) as mx:
        assert _node_in_use(mx) == 0
        try:
            set_global(on)
            assert wait_for(lambda: _node_in_use(mx) == 1, timeout=30)
            assert _auth(mx, ALICE, PASSWORD) == b"yes\n"
        finally:
            set_global(off)
        assert wait_for(lambda: _node_in_use(mx) == 0, timeout=30)
        assert _auth(mx, ALICE, PASSWORD) == b"yes\n"
        reason = "not Synced" if variable == "wsrep_desync" else "read-only"
        assert "database node 1 in use" in mx.log()
        assert reason in mx.log()


def test_with_the_whole_cluster_down_everything_defers_then_recovers(
        cluster: GaleraCluster, database: str) -> None:
    """Every node killed: AUTH defers (never yes), /readyz says unavailable; the cluster
    bootstrapped again, the instance answers yes again without a restart."""
    with _serve(cluster, database, 0, 1, 2, env=_FAILOVER_ENV) as mx1:
        with loaded(mx1) as load:
            assert wait_for(lambda: load.first_yes(0, 0))
            killed = time.monotonic()
            for index in range(len(cluster.nodes)):
                cluster.kill(index)
            assert wait_for(lambda: _ready(mx1).get("status") == "unavailable", timeout=30)
            assert wait_for(lambda: load.counts(0, time.monotonic() - 1)[_DEFER] > 0, timeout=30)
            down = time.monotonic()
            time.sleep(2)
            assert load.first_yes(0, down) is None
            assert _auth(mx1, ALICE, PASSWORD, "192.0.2.99") == _DEFER

            cluster.start_node(0, bootstrap=True)
            bootstrapped = time.monotonic()
            assert wait_for(lambda: load.first_yes(0, bootstrapped), timeout=60)
            recovered = (load.first_yes(0, bootstrapped) or 0) - bootstrapped
            for index in range(1, len(cluster.nodes)):
                cluster.start_node(index)
        assert load.wrong_yes() == []
        assert load.wrong_no() == []
        assert load.errors == []
        assert "no database node usable" in mx1.log()
        print(f"\nwhole cluster: down {bootstrapped - killed:.1f} s; first yes "
              f"{recovered:.1f} s after node 0 was Synced again; "
              f"answers: {dict(load.counts(0, killed))}")
