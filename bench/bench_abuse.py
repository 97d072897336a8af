"""Abuse defenses, measured side by side in one run (issue: brute-force throttling, limits, cache).

Run from the repository root with the project's venv::

    .venv/bin/python bench/bench_abuse.py            # about 4 minutes
    .venv/bin/python bench/bench_abuse.py --quick    # about 1.5 minutes

Three measurements, each a comparison inside one run on the same machine (it is shared and
noisy, so only the ratios mean anything):

(a) AUTH latency for an unknown user, a wrong password and the right password, production
    argon2id parameters, throttling on (limits set high enough never to lock): one client,
    the three kinds interleaved request by request; medians.  Unknown and wrong must be within
    5% of each other, or the time tells an attacker which users exist.
(b) Cached AUTH throughput against a bare asyncio Unix-socket server that answers ``yes`` to
    every line: both with one new connection per request, as Exim makes them.
(c) RELAY throughput with rate limiting on vs off (two services on the same database, limits
    too high to defer), and the database statements per relayed recipient it costs.

(b) and (c) alternate the variants round by round and report the median of per-round ratios.
Everything runs against a fresh MariaDB database on 127.0.0.1:3306, dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import (
    BenchDatabase,
    Server,
    _die_with_parent,
    ask_line,
    b64,
    log,
    start_yes_server,
    wait_for,
)

from eximauthd.core.hashing import Hasher
from eximauthd.settings import HashingConfig

NCPU = os.cpu_count() or 1
PASSWORD = "correct horse battery staple"  # noqa: S105 -- the bench's own accounts
CLIENT_IP = "192.0.2.10"


def start_service(name: str, workdir: Path, db_url: str, env_extra: dict[str, str]) -> Server:
    sock = str(workdir / f"{name}.sock")
    logfile = workdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env |= {"EXIMAUTHD_DATABASE_URL": db_url, "EXIMAUTHD_SOCKET_PATH": sock,
            "EXIMAUTHD_HTTP_ENABLED": "false",
            # Never lock anyone out during the bench: the counting is measured, not the lock.
            "EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_IP": "1000000",
            "EXIMAUTHD_THROTTLE_MAX_FAILURES_PER_USER": "1000000"} | env_extra
    with (workdir / f"{name}.stderr").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eximauthd", "serve", "--log-file", str(logfile)],
            env=env, cwd=workdir, stdout=err, stderr=err, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)  # noqa: PLW1509
    wait_for(lambda: ask_line(sock, b"PING\n", b"yes\n"), name, proc, logfile)
    return Server(name, proc, sock, logfile)


def one(path: str, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(line)
        data = b""
        while chunk := s.recv(256):
            data += chunk
        return data


def _hammer(args: tuple[str, list[bytes], bytes, float]) -> int:
    path, lines, expect, seconds = args
    done, i = 0, 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        reply = one(path, lines[i % len(lines)])
        if reply != expect:
            raise RuntimeError(f"unexpected reply {reply[:40]!r}")
        done += 1
        i += 1
    return done


def throughput(pool: mp.pool.Pool, path: str, lines: list[bytes], expect: bytes,
               seconds: float) -> float:
    counts = pool.map(_hammer, [(path, lines[k::NCPU] or lines, expect, seconds)
                                for k in range(NCPU)])
    return sum(counts) / seconds


def alternate(pool: mp.pool.Pool, variants: dict[str, tuple[str, list[bytes], bytes]],
              rounds: int, seconds: float) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            path, lines, expect = variants[name]
            rates[name].append(throughput(pool, path, lines, expect, seconds))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.0f}/s" for n in names))
    return rates


def ratio(rates: dict[str, list[float]], top: str, bottom: str) -> float:
    return statistics.median(a / b for a, b in zip(rates[top], rates[bottom], strict=True))


def com_counters(admin: pymysql.connections.Connection) -> dict[str, int]:
    with admin.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN "
                    "('Com_insert', 'Com_update', 'Com_select', 'Com_delete', 'Com_commit')")
        return {name: int(value) for name, value in cur.fetchall()}


def measure_auth_times(plain: Server, users: list[str], samples: int) -> list[str]:
    """(a) One client, the three kinds interleaved in rotating order; medians."""
    out: list[str] = []
    # (a) one client, kinds interleaved, rotating order
    log(f"(a) {samples} AUTHs of each kind")
    kinds = {
        "unknown user": lambda i: (f"nobody{i}@bench.test", f"guess-{i}", b"no\n"),
        "wrong password": lambda i: (users[i % len(users)], f"guess-{i}", b"no\n"),
        "right password": lambda i: (users[i % len(users)], PASSWORD, b"yes\n"),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    names = list(kinds)
    for i in range(samples):
        for name in names[i % 3:] + names[:i % 3]:
            user, password, expect = kinds[name](i)
            line = f"AUTH PLAIN {b64(user)} {b64(password)} {CLIENT_IP}\n".encode()
            t0 = time.perf_counter()
            reply = one(plain.socket_path, line)
            times[name].append(time.perf_counter() - t0)
            assert reply == expect, (name, reply)
    med = {k: statistics.median(v) for k, v in times.items()}
    out += ["### (a) AUTH time by outcome (throttling on, m=19456 t=2 p=1)", "",
            "| outcome | median ms | p90 ms |", "|---|---|---|"]
    for k, v in times.items():
        out.append(f"| {k} | {med[k] * 1000:.1f} | "
                   f"{statistics.quantiles(v, n=10)[-1] * 1000:.1f} |")
    spread = med["unknown user"] / med["wrong password"]
    out += ["", f"unknown / wrong = **{spread:.3f}** (target within 0.95..1.05)", ""]

    return out


def measure_cached(pool: mp.pool.Pool, cached: Server, yes: Server, users: list[str],
                   rounds: int, seconds: float) -> list[str]:
    """(b) Cached AUTH against the bare yes-server, alternating rounds."""
    out: list[str] = []
    line = f"AUTH PLAIN {b64(users[0])} {b64(PASSWORD)} {CLIENT_IP}\n".encode()
    assert one(cached.socket_path, line) == b"yes\n"  # fill the cache
    log("(b) cached AUTH vs bare yes-server")
    rates_b = alternate(pool, {"cached AUTH": (cached.socket_path, [line], b"yes\n"),
                               "bare yes server": (yes.socket_path, [line], b"yes\n")},
                        rounds, seconds)
    rb = ratio(rates_b, "cached AUTH", "bare yes server")
    out += ["### (b) cached AUTH vs a bare asyncio Unix-socket server", "",
            "| variant | median req/s |", "|---|---|"]
    out += [f"| {k} | {statistics.median(v):.0f} |" for k, v in rates_b.items()]
    out += ["", f"ratio = **{rb:.3f}** (target >= 0.5)", ""]
    return out


def measure_relay(pool: mp.pool.Pool, limited: Server, unlimited: Server, users: list[str],
                  db: BenchDatabase, rounds: int, seconds: float) -> list[str]:
    """(c) RELAY with rate limiting on and off, and the database writes it costs."""
    out: list[str] = []
    relays = [f"RELAY {b64(u)} {b64(u)} {b64('rcpt@remote.test')} {CLIENT_IP} "
              f"{os.getpid()}.{i}\n".encode() for i, u in enumerate(users * 4)]
    log("(c) RELAY, rate limiting on vs off")
    before = com_counters(db.admin)
    on_count_before = _relayed(limited)
    rates_c = alternate(pool, {"rate limiting on": (limited.socket_path, relays, b"yes\n"),
                               "rate limiting off": (unlimited.socket_path, relays,
                                                     b"yes\n")},
                        rounds, seconds)
    time.sleep(1.5)  # the last sync
    after = com_counters(db.admin)
    relayed_on = _relayed(limited) - on_count_before
    rc = ratio(rates_c, "rate limiting on", "rate limiting off")
    writes = (after["Com_insert"] - before["Com_insert"]
              + after["Com_update"] - before["Com_update"])
    out += ["### (c) RELAY with per-user rate limiting on vs off", "",
            "| variant | median req/s |", "|---|---|"]
    out += [f"| {k} | {statistics.median(v):.0f} |" for k, v in rates_c.items()]
    out += ["", f"ratio = **{rc:.3f}** (target >= 0.7)", "",
            f"Database writes while {relayed_on} recipients were rate-counted: "
            f"{writes} INSERT/UPDATE statements server-wide (batched upserts, one "
            f"transaction per sync per second), "
            f"{writes / max(relayed_on, 1):.4f} per recipient; "
            f"{after['Com_select'] - before['Com_select']} SELECTs.", ""]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, seconds, samples = (3, 2.0, 60) if args.quick else (7, 3.0, 200)
    started = time.time()
    out: list[str] = []
    db = BenchDatabase()
    db.create()
    servers: list[Server] = []
    workdir = Path(tempfile.mkdtemp(prefix="eab-", dir="/tmp"))
    try:
        hasher = Hasher(HashingConfig())  # production parameters: m=19456 t=2 p=1
        users = [f"user{i}@bench.test" for i in range(50)]
        with db.admin.cursor() as cur:
            cur.executemany(
                f"INSERT INTO `{db.name}`.eximauthd_users (address, domain, password_hash, "  # noqa: S608
                "enabled) VALUES (%s, 'bench.test', %s, 1)",
                [(u, hasher.hash(PASSWORD)) for u in users])
        plain = start_service("throttle-on", workdir, db.url, {})
        cached = start_service("cached", workdir, db.url, {"EXIMAUTHD_CACHE_TTL_SECONDS": "600"})
        limited = start_service("ratelimit-on", workdir, db.url, {
            "EXIMAUTHD_RATELIMIT_RECIPIENTS": "100000000/1h,100000000/1d",
            "EXIMAUTHD_RATELIMIT_MESSAGES": "100000000/1h,100000000/1d"})
        unlimited = start_service("ratelimit-off", workdir, db.url,
                                  {"EXIMAUTHD_RATELIMIT_ENABLED": "false"})
        yes = start_yes_server(workdir)
        servers += [plain, cached, limited, unlimited, yes]

        out += measure_auth_times(plain, users, samples)
        with mp.Pool(NCPU) as pool:
            out += measure_cached(pool, cached, yes, users, rounds, seconds)
            out += measure_relay(pool, limited, unlimited, users, db, rounds, seconds)
    finally:
        for server in servers:
            server.proc.terminate()
            server.proc.wait(timeout=20)
        db.drop()
    head = [f"## Abuse defenses (bench/bench_abuse.py{' --quick' if args.quick else ''}, "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)", "",
            f"Host: {NCPU} CPUs ({platform.machine()}), Python {platform.python_version()}, "
            f"load average at start {os.getloadavg()[0]:.2f}; {rounds} rounds of "
            f"{seconds:.0f}s per variant, {NCPU} client processes, one connection per request.",
            ""]
    print("\n".join(head + out + [f"Total {(time.time() - started) / 60:.1f} min."]))
    return 0


def _relayed(server: Server) -> int:
    """RELAY yes decisions so far, from the service's own log (one line per decision)."""
    path = Path(server.logfile)
    text = path.read_text(errors="replace") if path.exists() else ""
    return sum(1 for line in text.splitlines() if "verb=RELAY" in line and "result=yes" in line)


if __name__ == "__main__":
    sys.exit(main())
