"""Side-by-side throughput and latency of ``eximauthd serve`` against its baselines.

Run from the repository root with the project's venv::

    .venv/bin/python bench/bench_service.py            # full run, about 7 minutes
    .venv/bin/python bench/bench_service.py --quick    # about 2 minutes

The machine is shared and noisy, so nothing here is an absolute number to compare across runs:
every result is a RATIO of two variants measured in the same run, in alternating rounds (the
order rotates each round), and the reported ratio is the median of the per-round ratios.

Everything the bench needs is started here and stopped on exit: a fresh MariaDB database
(dropped afterwards) on 127.0.0.1:3306, one ``python -m eximauthd serve`` per hashing profile,
a bare asyncio "yes" server, and a private Dovecot instance (``dovecot -F -c <temp config>``)
whose auth service reads the same table.  Load comes from ``os.cpu_count()`` client processes,
each making one request per new connection as Exim does.  Only Unix sockets and loopback TCP
(to MariaDB) are used.  See bench/README.md for what each line of the output means.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import ctypes.util
import datetime
import math
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import argon2
import pymysql

from eximauthd.config import DatabaseConfig, HashingConfig

MARIADB_HOST = os.environ.get("ETEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("ETEST_MARIADB_PORT", "3306"))
CLIENT_IP = "192.0.2.10"
NCPU = os.cpu_count() or 1
CONCURRENCY = NCPU


def log(message: str) -> None:
    """Progress goes to stderr so that stdout is only the result table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """An argon2id parameter set, as argon2-cffi's PasswordHasher takes it."""

    key: str
    label: str
    memory_cost: int
    time_cost: int
    parallelism: int
    hash_len: int = 32
    salt_len: int = 16

    def hasher(self) -> argon2.PasswordHasher:
        return argon2.PasswordHasher(
            time_cost=self.time_cost, memory_cost=self.memory_cost,
            parallelism=self.parallelism, hash_len=self.hash_len, salt_len=self.salt_len,
            type=argon2.Type.ID,
        )

    @property
    def params(self) -> str:
        return f"m={self.memory_cost} t={self.time_cost} p={self.parallelism}"

    def service_env(self) -> dict[str, str]:
        return {
            "EXIMAUTHD_HASHING_MEMORY_COST": str(self.memory_cost),
            "EXIMAUTHD_HASHING_TIME_COST": str(self.time_cost),
            "EXIMAUTHD_HASHING_PARALLELISM": str(self.parallelism),
            "EXIMAUTHD_HASHING_HASH_LEN": str(self.hash_len),
            "EXIMAUTHD_HASHING_SALT_LEN": str(self.salt_len),
        }


def _profiles() -> tuple[Profile, Profile, Profile]:
    prod = HashingConfig()  # eximauthd's production default (OWASP's minimum)
    lib = argon2.PasswordHasher()  # argon2-cffi's own default (RFC 9106 low-memory)
    return (
        Profile("prod", "eximauthd default", prod.memory_cost, prod.time_cost,
                prod.parallelism, prod.hash_len, prod.salt_len),
        Profile("cffi", "argon2-cffi default", lib.memory_cost, lib.time_cost,
                lib.parallelism, lib.hash_len, lib.salt_len),
        # The cheapest argon2id there is: the request costs everything but the hash.
        Profile("min", "minimum cost", 8, 1, 1),
    )


PROD, CFFI, MINIMAL = _profiles()


@dataclass(frozen=True)
class Settings:
    rounds: int
    window_prod: float   # seconds each variant runs per round, AUTH m=19456
    window_cffi: float   # AUTH m=65536 (slower: longer windows for enough requests)
    window_fast: float   # RELAY, {PLAIN}, minimum-cost argon2id
    users_slow: int      # accounts per argon2 profile
    users_fast: int


FULL = Settings(rounds=7, window_prod=3.0, window_cffi=5.0, window_fast=2.0,
                users_slow=16, users_fast=64)
QUICK = Settings(rounds=3, window_prod=1.5, window_cffi=2.5, window_fast=1.0,
                 users_slow=6, users_fast=32)


# --- the client side: how Exim talks to each server -------------------------------------------


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii")


def ask_line(path: str, line: bytes, expect: bytes) -> bool:
    """Exim's ${readsocket}: connect, write the line, shut down writing, read to EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(path)
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(256):
            reply += chunk
    return reply == expect


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        end = buf.find(b"\n")
        if end >= 0:
            line = bytes(buf[:end])
            del buf[:end + 1]
            return line
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("dovecot closed the connection")
        buf += chunk


def ask_dovecot(path: str, resp: str, expect: bytes) -> bool:
    """Exim's ``dovecot`` authenticator (src/auths/dovecot.c), one authentication.

    Connect to auth-client, read the server's handshake up to DONE (it must offer PLAIN),
    send VERSION, CPID and AUTH in one write, read the OK/FAIL line, close.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(path)
        buf = bytearray()
        plain = False
        while (line := _read_line(sock, buf)) != b"DONE":
            fields = line.split(b"\t")
            if fields[0] == b"VERSION" and fields[1] != b"1":
                raise ConnectionError("dovecot auth protocol major version is not 1")
            if fields[0] == b"MECH" and fields[1].upper() == b"PLAIN":
                plain = True
        if not plain:
            raise ConnectionError("dovecot does not offer PLAIN")
        sock.sendall(
            f"VERSION\t1\t0\nCPID\t{os.getpid()}\n"
            f"AUTH\t1\tPLAIN\tservice=smtp\trip={CLIENT_IP}\tlip=127.0.0.1\tnologin"
            f"\tresp={resp}\n".encode("ascii"))
        answer = _read_line(sock, buf)
    return answer.split(b"\t", 2)[:2] == [expect, b"1"]


ASKERS: dict[str, Callable[[str, Any, bytes], bool]] = {
    "line": ask_line,
    "dovecot": ask_dovecot,
}


@dataclass
class Sample:
    """What one client (process or thread) measured in one window."""

    latencies: list[float] = field(default_factory=list)
    first_start: float = 0.0
    last_end: float = 0.0
    errors: int = 0
    error_text: str = ""

    @property
    def rate(self) -> float:
        span = self.last_end - self.first_start
        return len(self.latencies) / span if span > 0 and self.latencies else 0.0


def _loop(call: Callable[[Any], bool], payloads: Sequence[Any], offset: int, start_at: float,
          duration: float) -> Sample:
    """Call back to back from *start_at* for *duration* seconds; the last call may overrun.

    A client's rate is its completions over its own busy span (first start to last end), so a
    request still running at the deadline neither counts as idle time nor gets cut off.
    """
    sample = Sample()
    delay = start_at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    deadline = start_at + duration
    i = offset * max(1, len(payloads) // CONCURRENCY)
    sample.first_start = time.perf_counter()
    now = sample.first_start
    while now < deadline:
        try:
            ok = call(payloads[i % len(payloads)])
        except Exception as exc:  # a refused or cut connection is a failed request, not a crash
            ok = False
            sample.error_text = f"{type(exc).__name__}: {exc}"[:200]
        end = time.perf_counter()
        if ok:
            sample.latencies.append(end - now)
        else:
            sample.errors += 1
        sample.last_end = end
        now = end
        i += 1
    return sample


def _warm(call: Callable[[Any], bool], payloads: Sequence[Any], offset: int,
          seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    i = offset
    while True:
        with contextlib.suppress(Exception):
            call(payloads[i % len(payloads)])
        i += 1
        if time.perf_counter() >= deadline:
            return


def client_process(conn: Connection, index: int) -> None:
    """A load-generating client: one blocking request at a time, as one Exim process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        op, kind, target, payloads, expect, arg = job
        ask = ASKERS[kind]

        def call(payload: Any, ask: Callable[[str, Any, bytes], bool] = ask,
                 target: str = target, expect: bytes = expect) -> bool:
            return ask(target, payload, expect)

        if op == "warm":
            _warm(call, payloads, index, arg)
            conn.send(None)
        else:
            start_at, duration = arg
            conn.send(_loop(call, payloads, index, start_at, duration))


class Clients:
    """``CONCURRENCY`` client processes, forked before any thread or server exists."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("fork")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for index in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_process, args=(child, index), daemon=True,
                               name=f"bench-client-{index}")
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def warm(self, kind: str, target: str, payloads: Sequence[Any], expect: bytes,
             seconds: float) -> None:
        for conn in self.conns:
            conn.send(("warm", kind, target, payloads, expect, seconds))
        for conn in self.conns:
            conn.recv()

    def run(self, kind: str, target: str, payloads: Sequence[Any], expect: bytes,
            duration: float) -> list[Sample]:
        start_at = time.perf_counter() + 0.05
        for conn in self.conns:
            conn.send(("run", kind, target, payloads, expect, (start_at, duration)))
        return [conn.recv() for conn in self.conns]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


class InProcess:
    """The same load shape run on ``CONCURRENCY`` threads of this process: no socket at all."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pool = ThreadPoolExecutor(count, thread_name_prefix="bench-inproc")

    def warm(self, call: Callable[[Any], bool], payloads: Sequence[Any], seconds: float) -> None:
        futures = [self.pool.submit(_warm, call, payloads, i, seconds) for i in range(self.count)]
        for future in futures:
            future.result()

    def run(self, call: Callable[[Any], bool], payloads: Sequence[Any],
            duration: float) -> list[Sample]:
        start_at = time.perf_counter() + 0.05
        futures = [self.pool.submit(_loop, call, payloads, i, start_at, duration)
                   for i in range(self.count)]
        return [future.result() for future in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# --- raw hash verification (the in-process baselines) ------------------------------------------


def load_libsodium() -> tuple[Any, str]:
    """libsodium through pysodium if it is installed, else directly: the library Dovecot uses."""
    try:
        import pysodium  # noqa: PLC0415 -- optional, only for the supporting measurement

        lib: Any = pysodium.sodium
        via = f"pysodium {metadata.version('pysodium')}"
    except ImportError:
        name = ctypes.util.find_library("sodium")
        if name is None:
            raise
        lib = ctypes.CDLL(name)
        via = "ctypes"
    lib.sodium_init()
    lib.sodium_version_string.restype = ctypes.c_char_p
    version = lib.sodium_version_string().decode()
    path = "?"
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        for row in maps:
            if "libsodium" in row:
                path = row.split()[-1]
                break
    return lib, f"libsodium {version} ({path}, via {via})"


def sodium_verifier(lib: Any) -> Callable[[tuple[bytes, bytes]], bool]:
    strbytes = lib.crypto_pwhash_strbytes()
    verify = lib.crypto_pwhash_str_verify
    verify.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong]
    verify.restype = ctypes.c_int

    def call(item: tuple[bytes, bytes]) -> bool:
        encoded, password = item
        # ctypes releases the GIL for the call, as cffi does for argon2-cffi.
        return bool(verify(encoded.ljust(strbytes, b"\0"), password, len(password)) == 0)

    return call


def cffi_verifier(profile: Profile) -> Callable[[tuple[str, str]], bool]:
    ph = profile.hasher()

    def call(item: tuple[str, str]) -> bool:
        return ph.verify(item[0], item[1])

    return call


# --- processes we start ------------------------------------------------------------------------


def _die_with_parent() -> None:
    """preexec_fn: get SIGTERM if the bench itself dies, so no server outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen[bytes], name: str) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop on SIGTERM; killing it")
        proc.kill()
        proc.wait(5)


def proc_cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of *pid* (all its threads), plus reaped children's with *children*."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process tree: the root with its reaped children, plus live descendants."""
    return proc_cpu_seconds(pid, children=True) + sum(proc_cpu_seconds(p)
                                                      for p in descendants(pid))


def find_pid(comm_names: set[str]) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm",
                                                    encoding="ascii") as handle:
                if handle.read().strip() in comm_names:
                    return int(entry)
    return None


def status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for row in handle:
                if row.startswith(key + ":"):
                    return int(row.split()[1])
    except OSError:
        return None
    return None


def wait_for(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None,
             logfile: Path | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = logfile.read_text("utf-8", "replace")[-3000:] if logfile else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{text}")
        with contextlib.suppress(OSError, ConnectionError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f}s")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    socket_path: str
    logfile: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_eximauthd(name: str, workdir: Path, db_url: str, profile: Profile) -> Server:
    sock = str(workdir / f"{name}.sock")
    logfile = workdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env |= profile.service_env() | {
        "EXIMAUTHD_DATABASE_URL": db_url,
        "EXIMAUTHD_SOCKET_PATH": sock,
        "EXIMAUTHD_HTTP_ENABLED": "false",
    }
    with (workdir / f"{name}.stderr").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eximauthd", "serve", "--log-file", str(logfile)],
            env=env, cwd=workdir, stdout=err, stderr=err, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, start_new_session=True)  # noqa: PLW1509
    server = Server(name, proc, sock, workdir / f"{name}.stderr")
    wait_for(lambda: ask_line(sock, b"PING\n", b"yes\n"), f"eximauthd serve ({name})", proc,
             server.logfile)
    server.logfile = logfile
    return server


def yes_server_main(path: str) -> None:
    """The bare baseline: an asyncio Unix-socket server answering ``yes`` to every line."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()
            writer.write(b"yes\n")
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def main() -> None:
        server = await asyncio.start_unix_server(handle, path, backlog=1024)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


def start_yes_server(workdir: Path) -> Server:
    sock = str(workdir / "yes.sock")
    logfile = workdir / "yes.log"
    with logfile.open("wb") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--yes-server", sock],
                                stdout=err, stderr=err, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent,  # noqa: PLW1509
                                start_new_session=True)
    wait_for(lambda: ask_line(sock, b"x\n", b"yes\n"), "yes server", proc, logfile)
    return Server("yes", proc, sock, logfile)


# --- Dovecot ------------------------------------------------------------------------------------


def ensure_dovecot() -> str:
    """Install Debian's dovecot-core and dovecot-mysql when missing; '' when usable."""
    def installed() -> bool:
        if shutil.which("dovecot") is None:
            return False
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "dovecot-mysql"],
                             capture_output=True, text=True, check=False)
        return out.returncode == 0 and "ok installed" in out.stdout

    if installed():
        return ""
    if os.geteuid() != 0:
        return "dovecot-core/dovecot-mysql missing and not root to install them"
    log("installing dovecot-core dovecot-mysql with apt-get")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "dovecot-core", "dovecot-mysql"]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(cmd, env=env, capture_output=True, check=False)
    return "" if installed() else "apt-get could not install dovecot-core dovecot-mysql"


DOVECOT_CONF = """\
# A private Dovecot: only the auth service, nothing listening on the network.
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
instance_name = eximauthd-bench
protocols = none
listen =
ssl = no
auth_mechanisms = plain
# Exim connects from a TCP client address over no TLS: allow PLAIN there, as such setups do.
disable_plaintext_auth = no
auth_cache_size = 0
passdb {{
  driver = sql
  args = {base}/dovecot-sql.conf.ext
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
service auth {{
  unix_listener auth-client {{
    mode = 0600
  }}
}}
"""

# Same table and rows as eximauthd reads: argon2id hashes get Dovecot's {{ARGON2ID}} prefix,
# rows that already carry a {{SCHEME}} prefix (the {{PLAIN}} ones) are passed as they are.
DOVECOT_SQL = """\
driver = mysql
connect = host={host} port={port} dbname={db} user=root
default_pass_scheme = ARGON2ID
password_query = SELECT IF(LEFT(password_hash, 1) = '{{', password_hash, \
CONCAT('{{ARGON2ID}}', password_hash)) AS password FROM eximauthd_users \
WHERE address = '%u' AND enabled = 1
"""


def start_dovecot(workdir: Path, db_name: str) -> Server:
    base = workdir / "dc"
    (base / "run").mkdir(parents=True)
    (base / "state").mkdir()
    conf = base / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(base=base))
    (base / "dovecot-sql.conf.ext").write_text(
        DOVECOT_SQL.format(host=MARIADB_HOST, port=MARIADB_PORT, db=db_name))
    (base / "dovecot-sql.conf.ext").chmod(0o600)
    check = subprocess.run(["doveconf", "-c", str(conf), "-n"], capture_output=True, text=True,
                           check=False)
    if check.returncode != 0:
        raise RuntimeError(f"doveconf rejected the bench config:\n{check.stderr}")
    logfile = base / "dovecot.log"
    with (base / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdout=err, stderr=err,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,  # noqa: PLW1509
                                start_new_session=True)
    sock = str(base / "run" / "auth-client")

    def handshake() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(sock)
            buf = bytearray()
            while _read_line(s, buf) != b"DONE":
                pass
        return True

    wait_for(handshake, "dovecot", proc, base / "stderr.log")
    return Server("dovecot", proc, sock, logfile)


def dovecot_version() -> str:
    out = subprocess.run(["dovecot", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


# --- the database --------------------------------------------------------------------------------


@dataclass
class Account:
    address: str
    password: str
    stored: str


class BenchDatabase:
    """A fresh database with eximauthd's schema, and a SELECT-only user on it."""

    def __init__(self) -> None:
        self.name = f"eximauthd_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.ro_user = f"eab_ro_{secrets.token_hex(3)}"
        self.ro_password = secrets.token_hex(16)
        self.created = False
        self.admin = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root",
                                     autocommit=True, connect_timeout=5)

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{self.name}"

    @property
    def ro_url(self) -> str:
        return (f"mysql+pymysql://{self.ro_user}:{self.ro_password}@{MARIADB_HOST}:"
                f"{MARIADB_PORT}/{self.name}")

    def create(self) -> None:
        from eximauthd import dbschema  # noqa: PLC0415
        from eximauthd.store import Database  # noqa: PLC0415

        with self.admin.cursor() as cur:
            # Generated names, never input: DDL cannot bind identifiers.
            cur.execute(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")
            self.created = True
            for host in ("127.0.0.1", "localhost"):
                cur.execute(f"CREATE USER '{self.ro_user}'@'{host}' IDENTIFIED BY %s",
                            (self.ro_password,))
                cur.execute(f"GRANT SELECT ON `{self.name}`.* TO '{self.ro_user}'@'{host}'")
        db = Database(DatabaseConfig(url=self.url))
        try:
            dbschema.upgrade(db)
        finally:
            db.dispose()

    def insert(self, accounts: Sequence[Account]) -> None:
        with self.admin.cursor() as cur:
            cur.executemany(
                f"INSERT INTO `{self.name}`.eximauthd_users (address, domain, password_hash, "  # noqa: S608
                "enabled) VALUES (%s, %s, %s, 1)",
                [(a.address, a.address.split("@")[1], a.stored) for a in accounts])

    def changed_rows(self, accounts: Sequence[Account]) -> int:
        """Rows whose stored value is no longer what the bench inserted (should be 0)."""
        with self.admin.cursor() as cur:
            cur.execute(f"SELECT address, password_hash FROM `{self.name}`.eximauthd_users")  # noqa: S608
            now = dict(cur.fetchall())
        return sum(1 for a in accounts if now.get(a.address) != a.stored)

    def drop(self) -> None:
        with self.admin.cursor() as cur:
            for host in ("127.0.0.1", "localhost"):
                with contextlib.suppress(pymysql.MySQLError):
                    cur.execute(f"DROP USER IF EXISTS '{self.ro_user}'@'{host}'")
            if self.created:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        self.admin.close()


def make_accounts(domain: str, count: int, stored: Callable[[str], str]) -> list[Account]:
    accounts = []
    for i in range(count):
        password = f"bench-{i}-{secrets.token_urlsafe(9)}"
        accounts.append(Account(f"user{i}@{domain}", password, ""))
    with ThreadPoolExecutor(NCPU) as pool:
        for account, value in zip(accounts, pool.map(stored, [a.password for a in accounts]),
                                  strict=True):
            account.stored = value
    return accounts


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Variant:
    """One thing to measure: how to drive it and whose CPU it spends."""

    key: str
    label: str
    run: Callable[[float], list[Sample]]
    warm: Callable[[float], None]
    server_cpu: Callable[[], float]
    server_label: str
    samples: list[list[Sample]] = field(default_factory=list)
    cpu_ms_per_req: list[float] = field(default_factory=list)
    db_ms_per_req: list[float] = field(default_factory=list)

    def rates(self) -> list[float]:
        return [sum(s.rate for s in window) for window in self.samples]

    def latencies(self) -> list[float]:
        return sorted(x for window in self.samples for s in window for x in s.latencies)

    def errors(self) -> int:
        return sum(s.errors for window in self.samples for s in window)

    def error_text(self) -> str:
        return next((s.error_text for w in self.samples for s in w if s.error_text), "")


@dataclass
class RatioSpec:
    label: str
    numerator: str
    denominator: str
    target: float | None


@dataclass
class Group:
    title: str
    window: float
    variants: list[Variant]
    ratios: list[RatioSpec]


def measure_group(group: Group, rounds: int, db_pid: int | None) -> None:
    k = len(group.variants)
    for r in range(rounds):
        order = group.variants[r % k:] + group.variants[:r % k]
        for variant in order:
            variant.warm(min(0.3, group.window / 5))
            cpu0 = variant.server_cpu()
            db0 = proc_cpu_seconds(db_pid) if db_pid else 0.0
            window = variant.run(group.window)
            cpu1 = variant.server_cpu()
            db1 = proc_cpu_seconds(db_pid) if db_pid else 0.0
            done = sum(len(s.latencies) for s in window)
            variant.samples.append(window)
            if done:
                variant.cpu_ms_per_req.append((cpu1 - cpu0) * 1000 / done)
                variant.db_ms_per_req.append((db1 - db0) * 1000 / done)
        rates = ", ".join(f"{v.key}={v.rates()[-1]:.1f}/s" for v in group.variants)
        log(f"  round {r + 1}/{rounds}: {rates}")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def report_group(group: Group, rounds: int, out: list[str],
                 summary: list[tuple[str, float, float, float, float | None]]) -> None:
    out.append("")
    out.append(f"{group.title}  [{rounds} rounds x {group.window:g} s per variant, "
               f"{CONCURRENCY} concurrent clients]")
    out.append(f"  {'variant':<50} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
               f"{'srvCPU':>8} {'dbCPU':>7} {'n':>6} {'err':>4}")
    for v in group.variants:
        lat = v.latencies()
        cpu = statistics.median(v.cpu_ms_per_req) if v.cpu_ms_per_req else math.nan
        dbc = statistics.median(v.db_ms_per_req) if v.db_ms_per_req else math.nan
        out.append(f"  {v.label:<50} {statistics.median(v.rates()):>8.1f} "
                   f"{fmt_ms(percentile(lat, 0.50)):>8} {fmt_ms(percentile(lat, 0.99)):>8} "
                   f"{cpu:>8.3f} {dbc:>7.3f} {len(lat):>6} {v.errors():>4}")
        if v.errors():
            out.append(f"      first error: {v.error_text() or 'wrong answer'}")
    by_key = {v.key: v for v in group.variants}
    for spec in group.ratios:
        num, den = by_key.get(spec.numerator), by_key.get(spec.denominator)
        if num is None or den is None:
            continue
        per_round = [a / b for a, b in zip(num.rates(), den.rates(), strict=True) if b > 0]
        if not per_round:
            continue
        med = statistics.median(per_round)
        summary.append((spec.label, med, min(per_round), max(per_round), spec.target))


def print_summary(summary: list[tuple[str, float, float, float, float | None]],
                  out: list[str]) -> None:
    out.append("")
    out.append("RATIOS (throughput, median of per-round ratios; [min..max] over rounds)")
    for label, med, low, high, target in summary:
        if target is None:
            verdict = "(evidence)"
        else:
            verdict = f"target >= {target:.2f}: {'MET' if med >= target else 'MISSED'}"
        out.append(f"  {label:<58} {med:6.3f}  [{low:.3f}..{high:.3f}]  {verdict}")


# --- putting it together ------------------------------------------------------------------------


def auth_payloads(accounts: Sequence[Account]) -> list[bytes]:
    """eximauthd's AUTH line, as the Exim snippets build it with ${str2b64:...}."""
    return [f"AUTH PLAIN {b64(a.address)} {b64(a.password)} {CLIENT_IP}\n".encode()
            for a in accounts]


def dovecot_payloads(accounts: Sequence[Account]) -> list[str]:
    """The SASL PLAIN response Exim passes on to Dovecot: base64 of NUL user NUL password."""
    return [b64(b"\0" + a.address.encode() + b"\0" + a.password.encode()) for a in accounts]


def socket_variant(key: str, label: str, clients: Clients, server: Server, kind: str,
                   payloads: Sequence[Any], expect: bytes,
                   cpu: Callable[[], float] | None = None) -> Variant:
    return Variant(
        key, label,
        run=lambda d: clients.run(kind, server.socket_path, payloads, expect, d),
        warm=lambda s: clients.warm(kind, server.socket_path, payloads, expect, s),
        server_cpu=cpu or (lambda: proc_cpu_seconds(server.pid)),
        server_label=server.name,
    )


def inproc_variant(key: str, label: str, inproc: InProcess, call: Callable[[Any], bool],
                   payloads: Sequence[Any]) -> Variant:
    me = os.getpid()
    return Variant(key, label, run=lambda d: inproc.run(call, payloads, d),
                   warm=lambda s: inproc.warm(call, payloads, s),
                   server_cpu=lambda: proc_cpu_seconds(me), server_label="bench process")


def run(settings: Settings, with_dovecot: bool, mode: str) -> str:  # noqa: PLR0912, PLR0915
    started = time.monotonic()
    out: list[str] = []
    with contextlib.ExitStack() as stack:
        # Fork the clients first: before any thread, server or database connection exists.
        clients = Clients(CONCURRENCY)
        stack.callback(clients.close)
        workdir = Path(tempfile.mkdtemp(prefix="eab-", dir="/tmp"))  # short: sun_path
        stack.callback(shutil.rmtree, workdir, True)

        dovecot_problem = ensure_dovecot() if with_dovecot else "disabled with --no-dovecot"
        try:
            sodium, sodium_text = load_libsodium()
        except (ImportError, OSError) as exc:
            sodium, sodium_text = None, f"libsodium not loadable ({exc})"

        log("creating the bench database and accounts")
        db = BenchDatabase()
        stack.callback(db.drop)
        db.create()
        prod_ph, cffi_ph, min_ph = PROD.hasher(), CFFI.hasher(), MINIMAL.hasher()
        acc_prod = make_accounts("prod.bench.test", settings.users_slow, prod_ph.hash)
        acc_cffi = make_accounts("cffi.bench.test", settings.users_slow, cffi_ph.hash)
        acc_min = make_accounts("min.bench.test", settings.users_fast, min_ph.hash)
        acc_plain = make_accounts("plain.bench.test", settings.users_fast,
                                  lambda p: "{PLAIN}" + p)
        everyone = acc_prod + acc_cffi + acc_min + acc_plain
        db.insert(everyone)

        log("starting eximauthd serve (x4), the yes server and dovecot")
        # {PLAIN} rows are upgraded to argon2id on the first good login, by design.  To keep
        # measuring {PLAIN}, that instance reads through a SELECT-only user: the upgrade is
        # attempted (cheapest argon2id hash + one refused UPDATE) and fails, the row stays.
        servers = {
            "prod": start_eximauthd("ead-prod", workdir, db.url, PROD),
            "cffi": start_eximauthd("ead-cffi", workdir, db.url, CFFI),
            "min": start_eximauthd("ead-min", workdir, db.url, MINIMAL),
            "plain": start_eximauthd("ead-plain", workdir, db.ro_url, MINIMAL),
            "yes": start_yes_server(workdir),
        }
        for name, server in servers.items():
            stack.callback(_stop, server.proc, name)
        dovecot: Server | None = None
        if not dovecot_problem:
            try:
                dovecot = start_dovecot(workdir, db.name)
                stack.callback(_stop, dovecot.proc, "dovecot")
            except (RuntimeError, OSError) as exc:
                dovecot_problem = f"dovecot did not start: {exc}"
        if dovecot_problem:
            log(f"NOTE: no Dovecot comparison: {dovecot_problem}")

        inproc = InProcess(CONCURRENCY)
        stack.callback(inproc.close)
        db_pid = find_pid({"mariadbd", "mysqld"})

        def dovecot_cpu() -> float:
            return tree_cpu_seconds(dovecot.pid) if dovecot else 0.0

        groups: list[Group] = []
        for profile, accounts, server, window in (
            (PROD, acc_prod, servers["prod"], settings.window_prod),
            (CFFI, acc_cffi, servers["cffi"], settings.window_cffi),
        ):
            variants = [
                socket_variant("ead", f"eximauthd AUTH over socket ({profile.params})", clients,
                               server, "line", auth_payloads(accounts), b"yes\n"),
                inproc_variant("cffi", f"argon2-cffi verify, {CONCURRENCY} threads", inproc,
                               cffi_verifier(profile),
                               [(a.stored, a.password) for a in accounts]),
            ]
            if dovecot:
                variants.append(socket_variant(
                    "dovecot", "dovecot auth-client, sql + ARGON2ID", clients, dovecot,
                    "dovecot", dovecot_payloads(accounts), b"OK", dovecot_cpu))
            if sodium is not None:
                variants.append(inproc_variant(
                    "sodium", f"libsodium verify, {CONCURRENCY} threads", inproc,
                    sodium_verifier(sodium),
                    [(a.stored.encode(), a.password.encode()) for a in accounts]))
            n = "1" if profile is PROD else "1b"
            m = "3" if profile is PROD else "3b"
            groups.append(Group(
                f"[{n}] AUTH, argon2id {profile.params} ({profile.label})", window, variants, [
                    RatioSpec(f"{n} eximauthd / argon2-cffi raw  ({profile.params})",
                              "ead", "cffi", 0.90),
                    RatioSpec(f"{m} eximauthd / dovecot          ({profile.params})",
                              "ead", "dovecot", 1.0),
                    RatioSpec(f"{m}. libsodium raw / argon2-cffi raw ({profile.params})",
                              "sodium", "cffi", None),
                    RatioSpec(f"{m}. dovecot / libsodium raw     ({profile.params})",
                              "dovecot", "sodium", None),
                ]))

        domain = "prod.bench.test"
        relay = [f"RELAY {b64(f'user{i}@{domain}')} {b64(f'other{i}@{domain}')} "
                 f"{b64(f'rcpt{i}@remote.test')} {CLIENT_IP}\n".encode() for i in range(64)]
        groups.append(Group("[2] RELAY same-domain (no DB) vs bare asyncio 'yes' server",
                            settings.window_fast, [
            socket_variant("ead", "eximauthd RELAY over socket", clients, servers["prod"],
                           "line", relay, b"yes\n"),
            socket_variant("yes", "asyncio Unix server answering yes", clients, servers["yes"],
                           "line", relay, b"yes\n"),
        ], [RatioSpec("2 eximauthd RELAY / bare asyncio yes", "ead", "yes", 0.50)]))

        if dovecot:
            for key, title, accounts, server, target in (
                ("4", "{PLAIN} stored passwords", acc_plain, servers["plain"], 0.5),
                ("4b", f"argon2id at minimum cost ({MINIMAL.params})", acc_min, servers["min"],
                 None),
            ):
                groups.append(Group(f"[{key}] AUTH, {title}: per-request overhead",
                                    settings.window_fast, [
                    socket_variant("ead", "eximauthd AUTH over socket", clients, server, "line",
                                   auth_payloads(accounts), b"yes\n"),
                    socket_variant("dovecot", "dovecot auth-client, sql", clients, dovecot,
                                   "dovecot", dovecot_payloads(accounts), b"OK",
                                   dovecot_cpu),
                ], [RatioSpec(f"{key} eximauthd / dovecot, {title}", "ead", "dovecot",
                              target)]))

        # Every variant must answer right before anything is timed.
        for group in groups:
            for variant in group.variants:
                check = variant.run(0.01)
                if any(s.errors for s in check) or not any(s.latencies for s in check):
                    text = next((s.error_text for s in check if s.error_text), "wrong answer")
                    raise RuntimeError(f"{group.title}: {variant.label} fails: {text}")

        for group in groups:
            log(f"measuring {group.title}")
            measure_group(group, settings.rounds, db_pid)

        summary: list[tuple[str, float, float, float, float | None]] = []
        now = datetime.datetime.now().astimezone()
        out.append(f"eximauthd service benchmark ({mode}), {now:%Y-%m-%d %H:%M %Z}")
        out.append(f"  nproc={NCPU}  concurrency={CONCURRENCY}  python {platform.python_version()}"
                   f"  argon2-cffi {metadata.version('argon2-cffi')}"
                   f" (bindings {metadata.version('argon2-cffi-bindings')})")
        out.append(f"  {sodium_text}")
        out.append(f"  dovecot {dovecot_version() if dovecot else '-- ' + dovecot_problem}")
        out.append("  columns: req/s = median over rounds; p50/p99 over all requests;"
                   " srvCPU/dbCPU = CPU ms per request")
        out.append("  of the server process tree / mariadbd (medians over rounds)")
        for group in groups:
            report_group(group, settings.rounds, out, summary)
        print_summary(summary, out)

        out.append("")
        out.append("PEAK RSS (VmHWM) after the run")
        for key, server in servers.items():
            hwm = status_kib(server.pid, "VmHWM")
            what = {"prod": f"AUTH {PROD.params} + RELAY", "cffi": f"AUTH {CFFI.params}",
                    "min": f"AUTH {MINIMAL.params}", "plain": "AUTH {PLAIN}",
                    "yes": "bare asyncio"}[key]
            out.append(f"  {server.name:<10} pid {server.pid:<8} {what:<32} "
                       f"{(hwm or 0) / 1024:8.1f} MiB")
        if dovecot:
            workers = [p for p in descendants(dovecot.pid)
                       if "auth" in Path(f"/proc/{p}/comm").read_text().strip()]
            for pid in workers:
                comm = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                out.append(f"  dovecot    pid {pid:<8} {comm.strip()[:32]:<32} "
                           f"{(status_kib(pid, 'VmHWM') or 0) / 1024:8.1f} MiB")
        changed = db.changed_rows(everyone)
        out.append("")
        out.append(f"rows changed by the run: {changed} (must be 0: no rehash happened)")
        out.append(f"wall time {time.monotonic() - started:.0f} s")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (~2 min)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--no-dovecot", action="store_true", help="skip the Dovecot comparisons")
    parser.add_argument("--yes-server", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.yes_server:
        yes_server_main(args.yes_server)
        return 0
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = Settings(args.rounds, *(getattr(settings, f) for f in (
            "window_prod", "window_cffi", "window_fast", "users_slow", "users_fast")))

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    print(run(settings, not args.no_dovecot, "quick" if args.quick else "full"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
