"""Postfix policy requests per second: ``eximauthd serve``'s policy front end against a bare
policy server that answers ``action=DUNNO`` to everything, side by side in one run.

Both servers run as their own process on a Unix socket; one client process drives each in
turn with the load Postfix makes: CONNECTIONS long-lived connections (one per smtpd process),
each sending the full Postfix 3.7 attribute set of one RCPT, reading the answer, and sending
the next.  The rounds alternate between the servers so that background load hits both alike;
the table reports each server's median over the rounds and the ratio of the medians.

eximauthd runs on SQLite with the default worker pool and the per-user rate limiter on (limits
set so high that nothing is deferred: the counting is part of the cost).  Two request kinds:
the login's own address (decided without the database, as most mail is) and a sender the
login holds a grant for: with the defaults one grant lookup in a worker thread per request;
a second eximauthd with ``[policy] grant_cache_seconds = 10`` answers it from memory.

    .venv/bin/python bench/bench_policy.py [--quick]     # about 2 minutes, 40 s with --quick

The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servicekit import policy_request  # noqa: E402

CONNECTIONS = 8
ALICE = "alice@example.test"

BARE_SERVER = textwrap.dedent("""
    import asyncio, os, sys

    class Bare(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer = transport, b""

        def data_received(self, data):
            self.buffer += data
            while (end := self.buffer.find(b"\\n\\n")) >= 0:
                self.buffer = self.buffer[end + 2:]
                self.transport.write(b"action=DUNNO\\n\\n")

    async def main(path):
        server = await asyncio.get_running_loop().create_unix_server(Bare, path)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main(sys.argv[1]))
""")

CLIENT = textwrap.dedent("""
    import asyncio, sys, time

    async def one(path, request, until, counts, index):
        reader, writer = await asyncio.open_unix_connection(path)
        while time.monotonic() < until:
            writer.write(request)
            reply = await reader.readuntil(b"\\n\\n")
            if reply != b"action=DUNNO\\n\\n":
                raise SystemExit(f"unexpected reply {reply!r}")
            counts[index] += 1
        writer.close()

    async def main(path, seconds, connections, request):
        counts = [0] * connections
        until = time.monotonic() + seconds
        started = time.monotonic()
        await asyncio.gather(*(one(path, request, until, counts, i) for i in range(connections)))
        print(sum(counts) / (time.monotonic() - started))

    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]),
                     sys.stdin.buffer.read()))
""")


def _wait_socket(path: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(path)
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {path}")


def _drive(path: str, seconds: float, request: bytes) -> float:
    run = subprocess.run([sys.executable, "-c", CLIENT, path, str(seconds), str(CONNECTIONS)],
                         input=request, capture_output=True, check=True, timeout=seconds + 60)
    return float(run.stdout)


def _start_eximauthd(base: Path, name: str,
                     extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    from tests.support import FAST_HASHING_ENV, populate  # noqa: PLC0415

    base = base / name
    base.mkdir()
    url = f"sqlite:///{base / 'bench.sqlite3'}"
    populate(url)  # alice, with a grant for @partner.test
    path = str(base / "policy.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env |= FAST_HASHING_ENV | {
        "EXIMAUTHD_DATABASE_URL": url,
        "EXIMAUTHD_SOCKET_PATH": str(base / "eximauthd.sock"),
        "EXIMAUTHD_HTTP_ENABLED": "false",
        "EXIMAUTHD_POSTFIX_POLICY_ENABLED": "true",
        "EXIMAUTHD_POSTFIX_POLICY_PATH": path,
        "EXIMAUTHD_RATELIMIT_RECIPIENTS": "99999999/1h",
        "EXIMAUTHD_RATELIMIT_MESSAGES": "99999999/1h",
    } | extra
    log = (base / "eximauthd.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "eximauthd", "serve"], env=env, cwd=base,
                               stdout=log, stderr=log)
    _wait_socket(path, process)
    return process, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 4 s")
    args = parser.parse_args()
    rounds, seconds = (3, 4.0) if args.quick else (5, 10.0)
    base = Path(tempfile.mkdtemp(prefix="eabp-", dir="/tmp"))
    bare_path = str(base / "bare.sock")
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, bare_path],
                            stdout=subprocess.DEVNULL)
    started = [bare]
    try:
        eximauthd, path = _start_eximauthd(base, "defaults", {})
        started.append(eximauthd)
        remembering, cached_path = _start_eximauthd(
            base, "grant-cache", {"EXIMAUTHD_POLICY_GRANT_CACHE_SECONDS": "10"})
        started.append(remembering)
        _wait_socket(bare_path, bare)
        own, granted = policy_request(ALICE, ALICE), policy_request(ALICE, "sales@partner.test")
        kinds = {"own address": (path, own), "granted sender": (path, granted),
                 "granted sender, grant_cache_seconds = 10": (cached_path, granted)}
        results: dict[str, list[float]] = {"bare": []} | {kind: [] for kind in kinds}
        for warm in (path, cached_path):  # the limiter's first sync, the pools
            _drive(warm, 2, own)
        for number in range(rounds):
            results["bare"].append(_drive(bare_path, seconds, own))
            for kind, (where, request) in kinds.items():
                results[kind].append(_drive(where, seconds, request))
            print(f"round {number + 1}/{rounds}: " + ", ".join(
                f"{k} {v[-1]:.0f}/s" for k, v in results.items()), file=sys.stderr)
    finally:
        for process in started:
            process.terminate()
            process.wait(15)
        shutil.rmtree(base, ignore_errors=True)
    bare_median = statistics.median(results["bare"])
    print(f"Postfix policy requests/s, {CONNECTIONS} connections, {rounds} rounds of "
          f"{seconds:g} s, medians (nproc {os.cpu_count()})\n")
    print("| server | requests/s | vs bare |")
    print("|---|---|---|")
    print(f"| bare policy server (always DUNNO) | {bare_median:.0f} | 1.00x |")
    for kind in kinds:
        median = statistics.median(results[kind])
        print(f"| eximauthd, {kind} | {median:.0f} | {median / bare_median:.2f}x |")


if __name__ == "__main__":
    main()
