"""Peak memory of `eximauthd audit-log` on a small vs a 10x larger generated mainlog.

Not a test: run by hand, `.venv/bin/python bench/bench_audit.py [--messages N]`.  Both runs
happen in this one invocation, so the ratio is meaningful on a shared machine.  A streaming
auditor shows a ratio near 1.0: memory does not grow with the log.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

CHILD = """
import resource, sys, time
from eximauthd.exim.audit import Auditor
start = time.perf_counter()
auditor = Auditor()
with open(sys.argv[1], encoding="utf-8") as handle:
    auditor.feed(handle)
report = auditor.report()
print(report.lines, len(report.findings), time.perf_counter() - start,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def generate(path: Path, messages: int, seed: int = 1) -> None:
    """One message a second from 500 users on random IPs, each relayed and completed."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 1)  # Exim logs naive local time
    with path.open("w") as out:
        for n in range(messages):
            ts = (start + timedelta(seconds=n)).strftime("%Y-%m-%d %H:%M:%S")
            mid = f"1x{n:04X}"[-6:].rjust(6, "0") + f"-{n % 999999:06d}-{n % 99:02d}"
            user = f"user{rng.randrange(500)}@example.test"
            ip = f"198.51.{rng.randrange(256)}.{rng.randrange(256)}"
            out.write(f"{ts} {mid} <= "
                      f"{user} H=(client) [{ip}] P=esmtpsa A=eximauthd_plain:{user} S=1234\n")
            out.write(f"{ts} {mid} => "
                      f"r{n}@remote.test R=dnslookup T=remote_smtp H=mx.remote.test "
                      "[203.0.113.5]\n")
            out.write(f"{ts} {mid} Completed\n")


def measure(path: Path) -> tuple[int, float, int]:
    run = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                         text=True, check=True)
    lines, _findings, seconds, rss = run.stdout.split()
    return int(lines), float(seconds), int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        generate(small, args.messages)
        generate(large, args.messages * 10)
        rows = []
        for name, path in (("small", small), ("large", large), ("small", small)):
            lines, seconds, rss = measure(path)
            rows.append((name, lines, seconds, rss))
    print(f"{'log':6} {'lines':>10} {'seconds':>8} {'lines/s':>10} {'peak RSS KiB':>13}")
    for name, lines, seconds, rss in rows:
        print(f"{name:6} {lines:>10} {seconds:>8.2f} {lines / seconds:>10.0f} {rss:>13}")
    small_rss = min(r[3] for r in rows if r[0] == "small")
    large_rss = rows[1][3]
    print(f"peak RSS ratio large/small (10x the lines): {large_rss / small_rss:.2f}")


if __name__ == "__main__":
    main()
