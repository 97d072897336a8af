"""Peak RSS of ``eximauthd serve`` at the production argon2 parameters, under concurrent AUTHs.

Run from the repository root with the project's venv::

    .venv/bin/python bench/bench_rss.py                  # SQLite, about 30 s
    .venv/bin/python bench/bench_rss.py --db mariadb     # a throw-away MariaDB database
    .venv/bin/python bench/bench_rss.py --http           # with the HTTP API on as well

The service runs as ``bench_service.py`` starts it: ``python -m eximauthd serve`` with the
built-in hashing parameters (m=19456 KiB t=2 p=1), one worker per CPU, the Dovecot auth-client
socket on and the HTTP API off (``--http`` turns it on, on a free loopback port).  Accounts are
hashed with the same production parameters, so every AUTH verifies a real 19 MiB argon2id.
``--clients`` connections send AUTH lines with the right password (the AUTH cache is off by
default, so each one verifies a hash) for ``--seconds``.

Printed: VmRSS once the socket answers PING (the base), then VmHWM (the peak, the issue's
figure), VmRSS and the thread count after the load, and the number of AUTHs answered.
``--env KEY=VALUE`` adds to the service's environment (e.g. MALLOC_ARENA_MAX=2 for comparison).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eximauthd.core.addresses import parse_address  # noqa: E402
from eximauthd.core.hashing import Hasher  # noqa: E402
from eximauthd.db import upgrade  # noqa: E402
from eximauthd.db.accounts import OwnAccountStore  # noqa: E402
from eximauthd.db.engine import Database  # noqa: E402
from eximauthd.settings import DatabaseConfig, HashingConfig  # noqa: E402

MARIADB_HOST = os.environ.get("ETEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("ETEST_MARIADB_PORT", "3306"))
ADMIN_URL = f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/"
ACCOUNTS = 32
PASSWORD = "correct horse battery staple"  # noqa: S105 -- the bench accounts' password


def status(pid: int) -> dict[str, int]:
    """The kB figures and Threads of /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for row in handle:
            key, _, value = row.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def populate(url: str) -> None:
    db = Database(DatabaseConfig(url=url))
    upgrade.upgrade(db)
    hasher = Hasher(HashingConfig())  # the production parameters: each AUTH costs a real hash
    store = OwnAccountStore(db)
    for i in range(ACCOUNTS):
        store.add(parse_address(f"user{i}@example.test"), hasher.hash(PASSWORD))
    db.dispose()


def ask(path: str, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(30)
        conn.connect(path)
        conn.sendall(line)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(256)
            if not chunk:
                break
            reply += chunk
        return reply


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def drive(path: str, clients: int, seconds: float) -> dict[bytes, int]:
    until = time.monotonic() + seconds
    counts: dict[bytes, int] = {}
    lock = threading.Lock()

    def client(index: int) -> None:
        n = 0
        while time.monotonic() < until:
            account = f"user{(index + n * clients) % ACCOUNTS}@example.test"
            # Right passwords only: failures would soon be throttled (answered without the
            # account's hash), and the AUTH cache is off by default, so each one is verified.
            reply = ask(path, f"AUTH PLAIN {b64(account)} {b64(PASSWORD)} 127.0.0.1\n".encode())
            with lock:
                counts[reply] = counts.get(reply, 0) + 1
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def wait_ping(path: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"eximauthd serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if ask(path, b"PING\n") == b"yes\n":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"eximauthd serve did not answer PING:\n{log.read_text()}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_service(args: argparse.Namespace, base: Path, url: str,
                  sock: str) -> subprocess.Popen[bytes]:
    """``python -m eximauthd serve`` as bench_service.py starts it, answering PING."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env |= {
        "EXIMAUTHD_DATABASE_URL": url,
        "EXIMAUTHD_SOCKET_PATH": sock,
        "EXIMAUTHD_HTTP_ENABLED": "true" if args.http else "false",
        "EXIMAUTHD_DOVECOT_AUTH_ENABLED": "false" if args.no_dovecot else "true",
        "EXIMAUTHD_DOVECOT_AUTH_PATH": str(base / "dovecot.sock"),
    }
    if args.http:
        env |= {"EXIMAUTHD_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
                "EXIMAUTHD_HTTP_TOKEN_FILE": str(base / "token")}
    env |= dict(item.split("=", 1) for item in args.env)
    log = base / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "eximauthd", "serve"], env=env,
                                cwd=base, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    wait_ping(sock, proc, log)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=("sqlite", "mariadb"), default="sqlite")
    parser.add_argument("--http", action="store_true", help="turn the HTTP API on too")
    parser.add_argument("--no-dovecot", action="store_true",
                        help="leave the Dovecot auth-client socket off")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="eabrss-", dir="/tmp"))
    admin: sa.Engine | None = None
    dbname = ""
    if args.db == "sqlite":
        url = f"sqlite:///{base / 'bench.sqlite3'}"
    else:
        admin = sa.create_engine(ADMIN_URL)
        dbname = f"eximauthd_bench_rss_{os.getpid()}_{secrets.token_hex(3)}"
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{dbname}` CHARACTER SET utf8mb4"))
        url = f"{ADMIN_URL}{dbname}"
    proc: subprocess.Popen[bytes] | None = None
    try:
        populate(url)
        sock = str(base / "eximauthd.sock")
        proc = start_service(args, base, url, sock)
        idle = status(proc.pid)
        counts = drive(sock, args.clients, args.seconds)
        after = status(proc.pid)
        extra = " ".join(args.env)
        print(f"eximauthd serve, {args.db}, http={'on' if args.http else 'off'}, "
              f"dovecot={'off' if args.no_dovecot else 'on'}, argon2id m=19456 t=2 p=1, "
              f"{args.clients} clients x {args.seconds:.0f} s{', ' + extra if extra else ''}")
        print(f"  after start-up      VmRSS {idle['VmRSS'] / 1024:6.1f} MiB  "
              f"(anon {idle['RssAnon'] / 1024:.1f}, file {idle['RssFile'] / 1024:.1f}), "
              f"threads {idle['Threads']}")
        print(f"  after the load      VmRSS {after['VmRSS'] / 1024:6.1f} MiB  "
              f"(anon {after['RssAnon'] / 1024:.1f}, file {after['RssFile'] / 1024:.1f}), "
              f"threads {after['Threads']}")
        print(f"  PEAK RSS (VmHWM)          {after['VmHWM'] / 1024:6.1f} MiB")
        answers = ", ".join(f"{k.decode().strip()}={v}" for k, v in sorted(counts.items()))
        print(f"  answers: {answers}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        if admin is not None:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{dbname}`"))
            admin.dispose()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
