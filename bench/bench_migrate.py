"""``eximauthd migrate-passwords`` against raw libsodium hashing, and its memory vs table size.

Run from the repository root with the project's venv::

    .venv/bin/python bench/bench_migrate.py   # 30k rows: about 20 minutes on 2 busy CPUs
    .venv/bin/python bench/bench_migrate.py --rows 10000 --small-rows 2500   # about 8 minutes

Throughput: a fresh MariaDB table (the seed's ``users(id, username, domain, password, smtp)``)
holds ``--rows`` plaintext passwords; ``eximauthd migrate-passwords --jobs N`` hashes all of them
with the production parameters (m=19456, t=2, p=1).  The baseline is libsodium alone (through
PyNaCl, which eximauthd's Hasher uses for argon2id with p=1) hashing
the same number of passwords in N processes (``ProcessPoolExecutor.map``).  The machine is
shared, so the baseline is split in two halves run just before and just after the migration:
drift during the run weighs on both sides alike.  ratio = migration rows/s / baseline rows/s.

Memory: the peak RSS of the migrating process and of its largest worker, for a small and a large
table; first with the production parameters, then with argon2's cheapest ones so that tables
ten times larger take seconds (the hashing cost does not change what is held in memory).

Each measured run is a child process (``--child ...``), so its peak RSS is its own; the
workers' peak is their VmHWM, sampled every 0.2 s while they run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import resource
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import nacl.pwhash
import sqlalchemy as sa

MARIADB_HOST = os.environ.get("ETEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("ETEST_MARIADB_PORT", "3306"))
ADMIN_URL = f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/"
NCPU = os.cpu_count() or 1
PRODUCTION = {"memory_cost": 19456, "time_cost": 2, "parallelism": 1}
CHEAP = {"memory_cost": 8, "time_cost": 1, "parallelism": 1}
MIB = 1024  # ru_maxrss is in KiB on Linux


@dataclass(frozen=True)
class Measured:
    rows: int
    seconds: float
    parent_kib: int
    worker_kib: int

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


# --- children ---------------------------------------------------------------------------------

def child_migrate(url: str, jobs: int, params: dict[str, int]) -> dict[str, Any]:
    """Run the real command in this process; report its time and peak RSS."""
    os.environ.update({f"EXIMAUTHD_HASHING_{k.upper()}": str(v) for k, v in params.items()})
    os.environ.update({
        "EXIMAUTHD_DATABASE_URL": url,
        "EXIMAUTHD_LEGACY_TABLE": "users", "EXIMAUTHD_LEGACY_LOCAL_PART_COLUMN": "username",
        "EXIMAUTHD_LEGACY_DOMAIN_COLUMN": "domain", "EXIMAUTHD_LEGACY_PASSWORD_COLUMN": "password",
        "EXIMAUTHD_LEGACY_ENABLED_COLUMN": "smtp",
    })
    from eximauthd.cli import cli  # noqa: PLC0415 -- after the environment is set

    workers = _WorkerPeaks()
    start = time.perf_counter()
    cli.main(["migrate-passwords", "--jobs", str(jobs)], prog_name="eximauthd",
             standalone_mode=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **_rss(workers)}


_PARAMS: list[dict[str, int]] = []


def _start_raw(params: dict[str, int]) -> None:
    assert params["parallelism"] == 1, "libsodium's argon2id has p=1 only"
    _PARAMS.append(params)


def _raw_hash(password: str) -> str:
    params = _PARAMS[0]
    return nacl.pwhash.argon2id.str(password.encode(), opslimit=params["time_cost"],
                                    memlimit=params["memory_cost"] * 1024).decode()


def child_raw(rows: int, jobs: int, params: dict[str, int]) -> dict[str, Any]:
    """libsodium alone: hash *rows* passwords in *jobs* processes."""
    passwords = [secrets.token_urlsafe(9) for _ in range(rows)]
    workers = _WorkerPeaks()
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_raw, initargs=(params,)) as pool:
        done = sum(1 for _ in pool.map(_raw_hash, passwords, chunksize=16))
    seconds = time.perf_counter() - start
    assert done == rows
    return {"seconds": seconds, **_rss(workers)}


class _WorkerPeaks:
    """The largest VmHWM of this process's children, sampled while they live.

    Not RUSAGE_CHILDREN's ru_maxrss: Linux carries a process's peak across exec, so a spawned
    worker's figure is at least what its parent held when it forked, and the column showed the
    migrating process's own peak instead of the workers'.
    """

    def __init__(self) -> None:
        self.kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.2):
            try:
                children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
            except OSError:
                continue
            for pid in children:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.kib = max(self.kib, int(line.split()[1]))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.kib


def _rss(workers: _WorkerPeaks) -> dict[str, int]:
    return {"parent_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "worker_kib": workers.stop()}


def _run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"child {args[0]} failed with exit {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- the table ----------------------------------------------------------------------------------

def make_table(admin: sa.Engine, rows: int) -> tuple[str, str]:
    """A new database holding *rows* plaintext passwords in the seed's table; (name, url)."""
    name = f"eximauthd_bench_migrate_{os.getpid()}_{secrets.token_hex(3)}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = f"{ADMIN_URL}{name}"
    engine = sa.create_engine(url)
    table = sa.Table("users", sa.MetaData(),
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                     sa.Column("username", sa.String(64), nullable=False),
                     sa.Column("domain", sa.String(255), nullable=False),
                     sa.Column("password", sa.String(255)),
                     sa.Column("smtp", sa.Integer, nullable=False, server_default="1"))
    table.create(engine)
    with engine.begin() as conn:
        for first in range(0, rows, 5000):
            conn.execute(sa.insert(table), [
                {"username": f"user{i}", "domain": f"d{i % 97}.example",
                 "password": secrets.token_urlsafe(9)}
                for i in range(first, min(rows, first + 5000))])
    engine.dispose()
    return name, url


def drop(admin: sa.Engine, name: str) -> None:
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))


def migrate(admin: sa.Engine, rows: int, jobs: int, params: dict[str, int]) -> Measured:
    name, url = make_table(admin, rows)
    try:
        result = _run_child("migrate", url, str(jobs), json.dumps(params))
        with sa.create_engine(url).connect() as conn:
            left = conn.execute(sa.text(
                "SELECT COUNT(*) FROM users WHERE password NOT LIKE '$argon2id$%'")).scalar_one()
        assert left == 0, f"{left} rows not migrated"
    finally:
        drop(admin, name)
    return Measured(rows, result["seconds"], result["parent_kib"], result["worker_kib"])


def raw(rows: int, jobs: int, params: dict[str, int]) -> Measured:
    result = _run_child("raw", str(rows), str(jobs), json.dumps(params))
    return Measured(rows, result["seconds"], result["parent_kib"], result["worker_kib"])


# --- report -------------------------------------------------------------------------------------

def row(label: str, m: Measured) -> str:
    return (f"| {label} | {m.rows} | {m.seconds:.1f} | {m.rate:.1f} | "
            f"{m.parent_kib / MIB:.1f} | {m.worker_kib / MIB:.1f} |")


HEADER = ("| run | rows | seconds | rows/s | migrating process peak RSS MiB | "
          "largest worker peak RSS MiB |\n|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=30000)
    parser.add_argument("--small-rows", type=int, default=6000)
    parser.add_argument("--cheap-rows", default="20000,200000",
                        help="small,large table for the memory run with cheap parameters")
    parser.add_argument("--jobs", type=int, default=NCPU)
    args = parser.parse_args()
    small_cheap, large_cheap = (int(n) for n in args.cheap_rows.split(","))
    admin = sa.create_engine(ADMIN_URL)
    with admin.connect() as conn:
        server = conn.execute(sa.text("SELECT VERSION()")).scalar_one()
    started = datetime.datetime.now(datetime.UTC)
    load = os.getloadavg()[0]
    print(f"## migrate-passwords vs raw libsodium ({started:%Y-%m-%d %H:%M} UTC)\n")
    print(f"Command: `.venv/bin/python bench/bench_migrate.py {' '.join(sys.argv[1:])}`".rstrip()
          + "  ")
    print(f"Host: {NCPU} CPUs ({platform.processor() or platform.machine()}), "
          f"MariaDB {server}, Python {platform.python_version()}, "
          f"PyNaCl {metadata.version('pynacl')}; jobs = {args.jobs}; "
          f"load average at start {load:.2f}\n")
    print(f"### Throughput, argon2id m={PRODUCTION['memory_cost']} t={PRODUCTION['time_cost']} "
          f"p={PRODUCTION['parallelism']}\n")
    print(HEADER, flush=True)
    first_half = raw(args.rows // 2, args.jobs, PRODUCTION)
    print(row(f"raw libsodium, {args.jobs} processes (first half)", first_half), flush=True)
    migrated = migrate(admin, args.rows, args.jobs, PRODUCTION)
    print(row(f"migrate-passwords --jobs {args.jobs}", migrated), flush=True)
    second_half = raw(args.rows - args.rows // 2, args.jobs, PRODUCTION)
    print(row(f"raw libsodium, {args.jobs} processes (second half)", second_half), flush=True)
    baseline = args.rows / (first_half.seconds + second_half.seconds)
    print(f"\nratio migrate-passwords / raw libsodium = {migrated.rate:.1f} / {baseline:.1f} "
          f"rows/s = **{migrated.rate / baseline:.3f}** (target >= 0.90)\n")
    print("### Peak memory vs table size\n")
    print(HEADER, flush=True)
    small = migrate(admin, args.small_rows, args.jobs, PRODUCTION)
    print(row("production parameters", small), flush=True)
    print(row("production parameters (the throughput run)", migrated), flush=True)
    for rows in (small_cheap, large_cheap):
        print(row(f"cheap parameters m={CHEAP['memory_cost']} t={CHEAP['time_cost']}",
                  migrate(admin, rows, args.jobs, CHEAP)), flush=True)
    finished = datetime.datetime.now(datetime.UTC)
    print(f"\nTotal {(finished - started).total_seconds() / 60:.1f} min; load average at end "
          f"{os.getloadavg()[0]:.2f}.")
    admin.dispose()


def child(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "migrate":
        result = child_migrate(argv[1], int(argv[2]), json.loads(argv[3]))
    else:
        result = child_raw(int(argv[1]), int(argv[2]), json.loads(argv[3]))
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
