"""Two MX on two Galera nodes against one MX on a single MariaDB: AUTH and RELAY throughput and
the SQL statements each request costs, side by side in one run.

Run from the repository root with the project's venv (about 4 minutes)::

    .venv/bin/python bench/bench_galera.py [--seconds 10] [--rounds 2]

It starts what it needs and stops it on exit: a 3-node Galera cluster on loopback and, for the
baseline, one plain MariaDB server with the same settings but no wsrep (tests/galerakit.py: own
datadirs and ports under /tmp; not the shared server on 3306, whose counters other clients
move), and ``python -m eximauthd serve`` instances with cheap argon2
parameters (so that the database, not hashing, is what is measured).  Clients are threads of
this process, one request per new connection as Exim makes them; with two instances they
alternate between them.

Statements per request are the growth of MariaDB's ``Questions`` counter on the nodes the
instances use, divided by the requests answered: the background work (rate-counter syncs,
node checks) is included, as it is part of the cost.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pymysql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import servicekit as kit  # noqa: E402
from tests.galerakit import GaleraCluster  # noqa: E402
from tests.support import ALICE, PASSWORD, populate  # noqa: E402

CLIENTS = 8
# Throttling and rate limits on, but out of reach: their database work is measured, not refusals.
ENV = {"EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_IP": "1000000",
       "EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_USER": "1000000",
       "EXIMAUTHD_RATELIMIT_RECIPIENTS": "100000000/1h",
       "EXIMAUTHD_RATELIMIT_MESSAGES": "100000000/1h"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def questions(port: int) -> int:
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            row = cur.fetchone()
            return int(row[1]) if row else 0
    finally:
        conn.close()


def drive(instances: Sequence[kit.Served], line: Callable[[int], bytes], seconds: float) -> int:
    """Requests answered ``yes`` by *instances* in *seconds* from CLIENTS threads."""
    done = [0] * CLIENTS
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        n = 0
        while time.monotonic() < stop:
            served = instances[(index + n) % len(instances)]
            if served.ask(line(index * 1_000_000 + n), timeout=15) == b"yes\n":
                done[index] += 1
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def auth_line(n: int) -> bytes:
    return kit.auth_line(ALICE, PASSWORD, f"192.0.2.{n % 250 + 1}")


def relay_line(n: int) -> bytes:
    # A sender alice holds a grant for: every RELAY reads the grants (one statement).
    return kit.relay_line(ALICE, f"u{n % 50}@partner.test", "x@remote.test",
                          f"192.0.2.{n % 250 + 1}")


@contextlib.contextmanager
def setups(cluster: GaleraCluster, single: GaleraCluster
           ) -> Iterator[dict[str, tuple[list[kit.Served], list[int]]]]:
    name = f"eximauthd_bench_{secrets.token_hex(4)}"
    cluster.create_database(name)
    single.create_database(name)
    populate(single.nodes[0].url(name))
    populate(cluster.nodes[0].url(name))
    with kit.running(single.nodes[0].url(name), extra_env=ENV) as one, \
            kit.running(cluster.nodes[0].url(name), extra_env=ENV) as g0, \
            kit.running(cluster.nodes[1].url(name), extra_env=ENV) as g1:
        yield {"1 MX, single MariaDB": ([one], [single.nodes[0].port]),
               "2 MX, 2 Galera nodes": ([g0, g1], [cluster.nodes[0].port,
                                                   cluster.nodes[1].port])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    log("starting a 3-node Galera cluster and a plain MariaDB with the same settings")
    cluster = GaleraCluster()
    single = GaleraCluster(1, wsrep=False)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        cluster.start()
        single.start()
        with setups(cluster, single) as variants:
            for round_ in range(args.rounds):
                order = list(variants.items())
                if round_ % 2:
                    order.reverse()
                for verb, line in (("AUTH", auth_line), ("RELAY", relay_line)):
                    for label, (instances, ports) in order:
                        before = sum(questions(p) for p in ports)
                        answered = drive(instances, line, args.seconds)
                        asked = sum(questions(p) for p in ports) - before - len(ports)
                        rate = answered / args.seconds
                        per = asked / answered if answered else float("nan")
                        results.setdefault((verb, label), []).append((rate, per))
                        log(f"round {round_ + 1} {verb} {label}: {rate:.0f}/s, "
                            f"{per:.2f} statements/request")
    finally:
        cluster.stop()
        single.stop()
    print(f"# bench_galera.py, {started:%Y-%m-%d %H:%M} UTC, {args.rounds} rounds of "
          f"{args.seconds:.0f} s, {CLIENTS} client threads\n")
    print("| request | setup | requests/s (median) | SQL statements/request | ratio to 1 MX |")
    print("|---|---|---|---|---|")
    for verb in ("AUTH", "RELAY"):
        base = statistics.median(r for r, _ in results[(verb, "1 MX, single MariaDB")])
        for (v, label), samples in results.items():
            if v != verb:
                continue
            rate = statistics.median(r for r, _ in samples)
            per = statistics.median(p for _, p in samples)
            print(f"| {verb} | {label} | {rate:.0f} | {per:.2f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
