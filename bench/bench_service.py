"""Side-by-side throughput and latency of ``eximauthd serve`` against its baselines.

Run from the repository root with the project's venv::

    .venv/bin/python bench/bench_service.py            # full run, about 7 minutes
    .venv/bin/python bench/bench_service.py --quick    # about 2 minutes
    .venv/bin/python bench/bench_service.py --socket   # the socket's own cost only, ~1 minute
    .venv/bin/python bench/bench_service.py --workers 1,2,4   # service.workers, ~3 minutes

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
import dataclasses
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

from eximauthd.settings import DatabaseConfig, HashingConfig

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


# Many short rounds rather than a few long ones: the noise of a shared machine comes and goes
# within seconds, and a ratio is only as good as the two windows it compares being adjacent.
FULL = Settings(rounds=11, window_prod=2.0, window_cffi=3.0, window_fast=1.5,
                users_slow=16, users_fast=64)
QUICK = Settings(rounds=4, window_prod=1.0, window_cffi=1.5, window_fast=0.7,
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


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def cffi_single_thread_verifier() -> Callable[[tuple[str, str]], bool]:
    """argon2-cffi's own libargon2, but one thread per verification however many lanes.

    ``PasswordHasher.verify`` runs libargon2 with threads = lanes (p), so with p=4 every
    verification starts its own threads for every segment.  This calls the same library through
    the documented low-level ``argon2_ctx`` binding with threads=1 (lanes computed one after the
    other, as libsodium does) and compares the tag: it isolates the cost of that threading.
    """
    from argon2.low_level import ARGON2_VERSION, Type, core, ffi  # noqa: PLC0415

    def call(item: tuple[str, str]) -> bool:
        encoded, password = item
        params = argon2.extract_parameters(encoded)
        salt_b64, tag_b64 = encoded.split("$")[-2:]
        salt, tag = _b64decode(salt_b64), _b64decode(tag_b64)
        secret = password.encode()
        out = ffi.new("uint8_t[]", len(tag))
        c_pwd, c_salt = ffi.new("uint8_t[]", secret), ffi.new("uint8_t[]", salt)
        ctx = ffi.new("argon2_context *", {
            "out": out, "outlen": len(tag), "pwd": c_pwd, "pwdlen": len(secret),
            "salt": c_salt, "saltlen": len(salt), "secret": ffi.NULL, "secretlen": 0,
            "ad": ffi.NULL, "adlen": 0, "t_cost": params.time_cost,
            "m_cost": params.memory_cost, "lanes": params.parallelism, "threads": 1,
            "version": ARGON2_VERSION, "allocate_cbk": ffi.NULL, "free_cbk": ffi.NULL,
            "flags": 0,
        })
        if core(ctx, Type.ID.value) != 0:
            return False
        return secrets.compare_digest(bytes(ffi.buffer(out, len(tag))), tag)

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


Cpu = tuple[float, float]  # (user, system) seconds


def proc_cpu(pid: int, children: bool = False) -> Cpu:
    """utime, stime of *pid* (all its threads), plus reaped children's with *children*."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return (0.0, 0.0)
    user, system = int(fields[11]), int(fields[12])
    if children:
        user, system = user + int(fields[13]), system + int(fields[14])
    tick = os.sysconf("SC_CLK_TCK")
    return (user / tick, system / tick)


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


def tree_cpu(pid: int) -> Cpu:
    """CPU of a process tree: the root with its reaped children, plus live descendants."""
    parts = [proc_cpu(pid, children=True), *(proc_cpu(p) for p in descendants(pid))]
    return (sum(p[0] for p in parts), sum(p[1] for p in parts))


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
    dovecot_path: str = ""  # eximauthd's own Dovecot auth-client socket ([dovecot_auth])

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_eximauthd(name: str, workdir: Path, db_url: str, profile: Profile,
                    extra_env: dict[str, str] | None = None) -> Server:
    sock = str(workdir / f"{name}.sock")
    dovecot_sock = str(workdir / f"{name}-dc.sock")
    logfile = workdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env |= profile.service_env() | {
        "EXIMAUTHD_DATABASE_URL": db_url,
        "EXIMAUTHD_SOCKET_PATH": sock,
        "EXIMAUTHD_HTTP_ENABLED": "false",
        # The same process also speaks Dovecot's auth-client protocol (the [3x] variants).
        "EXIMAUTHD_DOVECOT_AUTH_ENABLED": "true",
        "EXIMAUTHD_DOVECOT_AUTH_PATH": dovecot_sock,
    } | (extra_env or {})
    with (workdir / f"{name}.stderr").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eximauthd", "serve", "--log-file", str(logfile)],
            env=env, cwd=workdir, stdout=err, stderr=err, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)  # noqa: PLW1509
    server = Server(name, proc, sock, workdir / f"{name}.stderr", dovecot_sock)
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
                                preexec_fn=_die_with_parent)  # noqa: PLW1509
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
# Dovecot 2.3 refuses an empty listen; with no protocols nothing binds it anyway.
listen = 127.0.0.1
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
                                stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509
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
    """A fresh database with eximauthd's schema, and a user that cannot write accounts."""

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
        from eximauthd.db import upgrade  # noqa: PLC0415
        from eximauthd.db.engine import Database  # noqa: PLC0415

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
            upgrade.upgrade(db)
        finally:
            db.dispose()
        with self.admin.cursor() as cur:
            # The throttle and the rate limiter write their own counters on every request;
            # only the account table stays read-only.
            for host in ("127.0.0.1", "localhost"):
                for table in ("eximauthd_auth_attempts", "eximauthd_known_clients",
                              "eximauthd_rate_counters"):
                    cur.execute(f"GRANT INSERT, UPDATE, DELETE ON `{self.name}`.`{table}` "
                                f"TO '{self.ro_user}'@'{host}'")

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


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (steal included: the hypervisor's noise)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(x) for x in handle.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    at: float
    server: Cpu
    clients: float
    bench: float
    db_cpu: float
    db_queries: int
    machine: float


class Meter:
    """Where the CPU goes during a window: the server, the load generators, mariadbd, others.

    mariadbd's CPU and its count of statements + pings (``Questions`` + ``Com_admin_commands``,
    COM_PING being an admin command) are shared with whatever else runs on the machine, so
    both are upper bounds.  ``machine`` less everything measured here is the background load.
    """

    def __init__(self, admin: pymysql.connections.Connection, client_pids: list[int]) -> None:
        self.admin = admin
        self.client_pids = client_pids
        self.db_pid = find_pid({"mariadbd", "mysqld"})

    def snapshot(self, server: Callable[[], Cpu]) -> Snapshot:
        with self.admin.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN "
                        "('Questions', 'Com_admin_commands')")
            queries = sum(int(value) for _, value in cur.fetchall()) - 1  # minus this SHOW
        return Snapshot(
            at=time.perf_counter(), server=server(),
            clients=sum(sum(proc_cpu(pid)) for pid in self.client_pids),
            bench=sum(proc_cpu(os.getpid())),
            db_cpu=sum(proc_cpu(self.db_pid)) if self.db_pid else 0.0,
            db_queries=queries, machine=machine_busy_seconds())


@dataclass
class Variant:
    """One thing to measure: how to drive it and whose CPU it spends."""

    key: str
    label: str
    run: Callable[[float], list[Sample]]
    warm: Callable[[float], None]
    server_cpu: Callable[[], Cpu]
    in_process: bool = False
    own_queries: float = 0.0  # statements + pings per request, measured by calibrate()
    samples: list[list[Sample]] = field(default_factory=list)
    # Per request, one value per round:
    cpu_ms: list[float] = field(default_factory=list)      # the server
    sys_ms: list[float] = field(default_factory=list)      # ... of which kernel
    client_ms: list[float] = field(default_factory=list)   # the client processes
    db_ms: list[float] = field(default_factory=list)       # mariadbd
    db_queries: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)    # server + clients + mariadbd
    background: list[float] = field(default_factory=list)  # CPUs busy with anything else

    def account(self, before: Snapshot, after: Snapshot, done: int) -> None:
        server = sum(after.server) - sum(before.server)
        clients = after.clients - before.clients
        # mariadbd is shared: charge this variant only its share of the statements counted.
        counted = after.db_queries - before.db_queries
        share = min(1.0, self.own_queries * done / counted) if counted > 0 else 0.0
        db = (after.db_cpu - before.db_cpu) * share
        ours = server + clients + db
        if not self.in_process:  # the bench's own main thread just waits, but count it
            ours += after.bench - before.bench
        elapsed = after.at - before.at
        self.background.append(max(0.0, (after.machine - before.machine - ours) / elapsed))
        if done:
            self.cpu_ms.append(server * 1000 / done)
            self.sys_ms.append((after.server[1] - before.server[1]) * 1000 / done)
            self.client_ms.append(clients * 1000 / done)
            self.db_ms.append(db * 1000 / done)
            self.db_queries.append(counted / done)
            self.total_ms.append((server + clients + db) * 1000 / done)

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
    order: str      # sorts the summary: "1", "1b", "2", ...
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


def measure_group(group: Group, rounds: int, meter: Meter) -> None:
    """Every variant once per round, the order rotating, each after a short warm-up."""
    k = len(group.variants)
    for r in range(rounds):
        for variant in group.variants[r % k:] + group.variants[:r % k]:
            variant.warm(min(0.3, group.window / 5))
            before = meter.snapshot(variant.server_cpu)
            window = variant.run(group.window)
            after = meter.snapshot(variant.server_cpu)
            variant.samples.append(window)
            variant.account(before, after, sum(len(s.latencies) for s in window))
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


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


Summary = list[tuple[RatioSpec, float, float, float, float]]


def report_group(group: Group, rounds: int, out: list[str], summary: Summary) -> None:
    out.append("")
    out.append(f"{group.title}")
    out.append(f"    {rounds} rounds x {group.window:g} s per variant, {CONCURRENCY} concurrent "
               "clients")
    out.append(f"  {'variant':<44} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'srvCPU':>7} "
               f"{'(sys)':>6} {'cliCPU':>6} {'dbCPU':>6} {'dbQ':>4} {'totCPU':>7} {'bg':>4} "
               f"{'n':>6} {'err':>3}")
    for v in group.variants:
        lat = v.latencies()
        out.append(f"  {v.label:<44} {_median(v.rates()):>7.1f} "
                   f"{fmt_ms(percentile(lat, 0.50)):>7} {fmt_ms(percentile(lat, 0.99)):>7} "
                   f"{_median(v.cpu_ms):>7.3f} {_median(v.sys_ms):>6.2f} "
                   f"{_median(v.client_ms):>6.3f} {_median(v.db_ms):>6.3f} "
                   f"{v.own_queries:>4.1f} {_median(v.total_ms):>7.3f} "
                   f"{_median(v.background):>4.2f} {len(lat):>6} {v.errors():>3}")
        if v.errors():
            out.append(f"      first error: {v.error_text() or 'wrong answer'}")
    by_key = {v.key: v for v in group.variants}
    for spec in group.ratios:
        num, den = by_key.get(spec.numerator), by_key.get(spec.denominator)
        if num is None or den is None:
            continue
        per_round = [a / b for a, b in zip(num.rates(), den.rates(), strict=True) if b > 0]
        # The same comparison from CPU cost alone: what the throughput ratio would be on a
        # CPU-bound machine with nobody else on it.  Much less sensitive to background load.
        cost = [b / a for a, b in zip(num.total_ms, den.total_ms, strict=False) if a > 0]
        if per_round:
            summary.append((spec, statistics.median(per_round), min(per_round),
                            max(per_round), _median(cost)))


def report_summary(summary: Summary, out: list[str]) -> None:
    out.append("")
    out.append("RATIOS: throughput, median of the per-round ratios [min..max over rounds];")
    out.append("        cost = the same from CPU alone: median per-round totCPU(B)/totCPU(A)")
    for spec, med, low, high, cost in sorted(summary, key=lambda row: row[0].order):
        if spec.target is None:
            verdict = "evidence"
        else:
            verdict = f">= {spec.target:.2f} {'MET' if med >= spec.target else 'MISSED'}"
        out.append(f"  {spec.order:<5} {spec.label:<60} {med:6.3f} [{low:.3f}..{high:.3f}]"
                   f"  cost {cost:5.3f}  {verdict}")


# --- putting it together ------------------------------------------------------------------------


def auth_payloads(accounts: Sequence[Account]) -> list[bytes]:
    """eximauthd's AUTH line, as the Exim snippets build it with ${str2b64:...}."""
    return [f"AUTH PLAIN {b64(a.address)} {b64(a.password)} {CLIENT_IP}\n".encode()
            for a in accounts]


def dovecot_payloads(accounts: Sequence[Account]) -> list[str]:
    """The SASL PLAIN response Exim passes on to Dovecot: base64 of NUL user NUL password."""
    return [b64(b"\0" + a.address.encode() + b"\0" + a.password.encode()) for a in accounts]


def relay_payloads(domain: str, count: int) -> list[bytes]:
    """Same-domain relays: decided by the pure policy, no database read."""
    return [f"RELAY {b64(f'user{i}@{domain}')} {b64(f'other{i}@{domain}')} "
            f"{b64(f'rcpt{i}@remote.test')} {CLIENT_IP}\n".encode() for i in range(count)]


@dataclass
class Setup:
    """Everything started for the run."""

    clients: Clients
    inproc: InProcess
    db: BenchDatabase
    servers: dict[str, Server]
    dovecot: Server | None
    dovecot_problem: str
    sodium: Any
    sodium_text: str
    accounts: dict[str, list[Account]]

    def socket_variant(self, key: str, label: str, server: Server, payloads: Sequence[Any],
                       expect: bytes = b"yes\n", dovecot_protocol: bool = False) -> Variant:
        """*server* on its socket; with *dovecot_protocol*, an eximauthd server on its
        Dovecot auth-client socket (asked as Exim's dovecot driver asks Dovecot)."""
        kind = "dovecot" if server is self.dovecot or dovecot_protocol else "line"
        path = server.dovecot_path if dovecot_protocol else server.socket_path
        clients = self.clients
        cpu: Callable[[], Cpu]
        if server is self.dovecot:
            cpu = lambda: tree_cpu(server.pid)  # noqa: E731 -- auth, auth-worker, master...
        else:
            cpu = lambda: proc_cpu(server.pid)  # noqa: E731
        return Variant(
            key, label,
            run=lambda d: clients.run(kind, path, payloads, expect, d),
            warm=lambda s: clients.warm(kind, path, payloads, expect, s),
            server_cpu=cpu)

    def inproc_variant(self, key: str, label: str, call: Callable[[Any], bool],
                       payloads: Sequence[Any]) -> Variant:
        inproc, me = self.inproc, os.getpid()
        return Variant(key, label, run=lambda d: inproc.run(call, payloads, d),
                       warm=lambda s: inproc.warm(call, payloads, s),
                       server_cpu=lambda: proc_cpu(me), in_process=True)


def start_everything(settings: Settings, with_dovecot: bool,
                     stack: contextlib.ExitStack, socket_only: bool = False,
                     workers: Sequence[int] = ()) -> Setup:
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
    accounts = {
        "prod": make_accounts("prod.bench.test", settings.users_slow, PROD.hasher().hash),
    }
    if not socket_only:
        accounts |= {
            "cffi": make_accounts("cffi.bench.test", settings.users_slow, CFFI.hasher().hash),
            "min": make_accounts("min.bench.test", settings.users_fast, MINIMAL.hasher().hash),
            "plain": make_accounts("plain.bench.test", settings.users_fast,
                                   lambda p: "{PLAIN}" + p),
        }
    db.insert([a for group in accounts.values() for a in group])

    log("starting eximauthd serve (x5, or x2 with --socket), the yes server and dovecot")
    # {PLAIN} rows are upgraded to argon2id on the first good login, by design.  To keep
    # measuring {PLAIN}, that instance connects as a user that may not write the account table
    # (only the throttle's and rate limiter's own): the upgrade is attempted (cheapest argon2id
    # hash + one refused UPDATE) and fails, the row stays.
    # "cached" is the production profile with the AUTH cache on (a hit is answered from
    # memory); "prod" has it off, as by default, so that group 1 measures real checks.
    # The RELAYs are rate-counted as usual but under limits no run reaches: at a few
    # thousand a second the default 1000/1h per user would turn them into defers.
    unlimited = {"EXIMAUTHD_RATELIMIT_RECIPIENTS": "100000000/1h,100000000/1d",
                 "EXIMAUTHD_RATELIMIT_MESSAGES": "100000000/1h,100000000/1d"}
    servers: dict[str, Server] = {}
    instances = [("prod", db.url, PROD, unlimited),
                 ("cached", db.url, PROD, {"EXIMAUTHD_CACHE_TTL_SECONDS": "600"})]
    if workers:
        instances = [(f"w{n}", db.url, PROD, {"EXIMAUTHD_SERVICE_WORKERS": str(n)})
                     for n in workers]
    elif not socket_only:
        instances += [("cffi", db.url, CFFI, None), ("min", db.url, MINIMAL, None),
                      ("plain", db.ro_url, MINIMAL, None)]
    for key, url, profile, extra in instances:
        servers[key] = start_eximauthd(f"ead-{key}", workdir, url, profile, extra)
        stack.callback(_stop, servers[key].proc, f"ead-{key}")
    servers["yes"] = start_yes_server(workdir)
    stack.callback(_stop, servers["yes"].proc, "yes")
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
    return Setup(clients, inproc, db, servers, dovecot, dovecot_problem, sodium, sodium_text,
                 accounts)


def auth_group(setup: Setup, profile: Profile, window: float, n: str, m: str) -> Group:
    accounts = setup.accounts[profile.key]
    pairs = [(a.stored, a.password) for a in accounts]
    variants = [
        setup.socket_variant("ead", f"eximauthd AUTH, socket ({profile.params})",
                             setup.servers[profile.key], auth_payloads(accounts)),
        setup.socket_variant("eaddc", "eximauthd AUTH, Dovecot protocol",
                             setup.servers[profile.key], dovecot_payloads(accounts), b"OK",
                             dovecot_protocol=True),
        setup.inproc_variant("cffi", f"argon2-cffi verify, {CONCURRENCY} threads",
                             cffi_verifier(profile), pairs),
    ]
    if setup.dovecot:
        variants.append(setup.socket_variant(
            "dovecot", "dovecot auth-client, sql, {ARGON2ID}", setup.dovecot,
            dovecot_payloads(accounts), b"OK"))
    if setup.sodium is not None:
        variants.append(setup.inproc_variant(
            "sodium", f"libsodium str_verify, {CONCURRENCY} threads",
            sodium_verifier(setup.sodium),
            [(a.stored.encode(), a.password.encode()) for a in accounts]))
    if profile.parallelism > 1:
        variants.append(setup.inproc_variant(
            "cffi1", f"argon2-cffi argon2_ctx threads=1, {CONCURRENCY} thr",
            cffi_single_thread_verifier(), pairs))
    p = profile.params
    return Group(f"[{n}/{m}] AUTH, argon2id {p} ({profile.label})", window, variants, [
        RatioSpec(n, f"AUTH eximauthd / argon2-cffi raw, {p}", "ead", "cffi", 0.90),
        RatioSpec(m, f"AUTH eximauthd / dovecot, {p}", "ead", "dovecot", 1.0),
        RatioSpec(m + "d", f"AUTH eximauthd Dovecot protocol / dovecot, {p}", "eaddc",
                  "dovecot", 1.0),
        RatioSpec(m + "d.1", f"  eximauthd Dovecot protocol / eximauthd socket, {p}", "eaddc",
                  "ead", None),
        RatioSpec(m + ".1", f"  libsodium raw / argon2-cffi raw, {p}", "sodium", "cffi", None),
        RatioSpec(m + ".2", f"  dovecot / libsodium raw, {p}", "dovecot", "sodium", None),
        RatioSpec(m + ".3", f"  argon2-cffi threads=1 / argon2-cffi verify, {p}", "cffi1",
                  "cffi", None),
    ])


def socket_groups(setup: Setup, settings: Settings) -> list[Group]:
    """What the socket itself costs: decisions made on the event loop, against the bare
    server.  Both eximauthd lines are answered without a worker thread or the database."""
    relay = relay_payloads("prod.bench.test", 64)
    cached = auth_payloads(setup.accounts["prod"])
    yes = setup.servers["yes"]
    return [
        Group("[2] RELAY, same domain (no DB) vs a bare asyncio 'yes' server",
              settings.window_fast, [
            setup.socket_variant("ead", "eximauthd RELAY, socket", setup.servers["prod"],
                                 relay),
            setup.socket_variant("yes", "asyncio Unix server answering yes", yes, relay),
        ], [RatioSpec("2", "RELAY eximauthd / bare asyncio yes server", "ead", "yes", 0.70)]),
        Group("[5] AUTH answered from the cache vs a bare asyncio 'yes' server",
              settings.window_fast, [
            setup.socket_variant("ead", f"eximauthd cached AUTH, socket ({PROD.params})",
                                 setup.servers["cached"], cached),
            setup.socket_variant("yes", "asyncio Unix server answering yes", yes, cached),
        ], [RatioSpec("5", "cached AUTH eximauthd / bare asyncio yes server", "ead", "yes",
                      0.70)]),
    ]


def worker_groups(setup: Setup, settings: Settings, workers: Sequence[int]) -> list[Group]:
    """``service.workers`` against the default (one per CPU), under more clients than CPUs
    (many Exim processes ask at once): argon2 work, and database reads (grant lookups)."""
    default = f"w{NCPU}" if NCPU in workers else f"w{workers[0]}"
    auth = auth_payloads(setup.accounts["prod"])
    # Another domain and no grant: the policy refuses, then the worker reads the grants.
    grants = [f"RELAY {b64(f'user{i}@prod.bench.test')} {b64(f'x{i}@elsewhere.test')} "
              f"{b64('rcpt@remote.test')} {CLIENT_IP}\n".encode() for i in range(64)]
    groups = []
    for key, title, payloads, expect, window in (
            ("W1", f"AUTH, argon2id {PROD.params}", auth, b"yes\n", settings.window_prod),
            ("W2", "RELAY needing a grant lookup (database)", grants, b"no\n",
             settings.window_fast)):
        variants = [setup.socket_variant(f"w{n}", f"eximauthd, {n} worker thread(s)",
                                         setup.servers[f"w{n}"], payloads, expect)
                    for n in workers]
        ratios = [RatioSpec(f"{key}.{n}", f"{title}: {n} / {default[1:]} workers", f"w{n}",
                            default, None) for n in workers if f"w{n}" != default]
        groups.append(Group(f"[{key}] {title} by service.workers", window, variants, ratios))
    return groups


def build_groups(setup: Setup, settings: Settings, socket_only: bool = False,
                 workers: Sequence[int] = ()) -> list[Group]:
    if workers:
        return worker_groups(setup, settings, workers)
    if socket_only:
        return socket_groups(setup, settings)
    groups = [auth_group(setup, PROD, settings.window_prod, "1", "3"),
              auth_group(setup, CFFI, settings.window_cffi, "1b", "3b"),
              *socket_groups(setup, settings)]
    if setup.dovecot is None:
        return groups
    for key, title, target in (("4", "{PLAIN}", 0.5),
                               ("4b", f"argon2id {MINIMAL.params}", None)):
        accounts = setup.accounts["plain" if key == "4" else "min"]
        server = setup.servers["plain" if key == "4" else "min"]
        groups.append(Group(f"[{key}] AUTH per-request overhead, stored {title}",
                            settings.window_fast, [
            setup.socket_variant("ead", "eximauthd AUTH, socket", server, auth_payloads(accounts)),
            setup.socket_variant("eaddc", "eximauthd AUTH, Dovecot protocol", server,
                                 dovecot_payloads(accounts), b"OK", dovecot_protocol=True),
            setup.socket_variant("dovecot", "dovecot auth-client, sql", setup.dovecot,
                                 dovecot_payloads(accounts), b"OK"),
        ], [RatioSpec(key, f"AUTH eximauthd / dovecot, {title}", "ead", "dovecot", target),
            RatioSpec(key + "d", f"AUTH eximauthd Dovecot protocol / dovecot, {title}",
                      "eaddc", "dovecot", target)]))
    return groups


def check_answers(groups: Sequence[Group]) -> None:
    """Every variant must answer right before anything is timed."""
    for group in groups:
        for variant in group.variants:
            window = variant.run(0.01)
            if any(s.errors for s in window) or not any(s.latencies for s in window):
                text = next((s.error_text for s in window if s.error_text), "wrong answer")
                raise RuntimeError(f"{group.title}: {variant.label} fails: {text}")


def calibrate(groups: Sequence[Group], meter: Meter) -> None:
    """Statements + pings each variant sends to MariaDB per request.

    Other clients of the shared server only ever add to the count, so the smallest of a few
    short runs is the variant's own.
    """
    for group in groups:
        for variant in group.variants:
            if variant.in_process:
                continue
            counts = []
            for _ in range(3):
                before = meter.snapshot(variant.server_cpu)
                done = sum(len(s.latencies) for s in variant.run(0.15))
                after = meter.snapshot(variant.server_cpu)
                if done:
                    counts.append((after.db_queries - before.db_queries) / done)
            variant.own_queries = round(min(counts), 1) if counts else 0.0


def _bindings_build() -> str:
    """"stock wheel" (manylinux, SSE2 kernels) or "built on this host" (docs/passwords.md)."""
    wheel = metadata.distribution("argon2-cffi-bindings").read_text("WHEEL") or ""
    return "stock wheel" if "manylinux" in wheel else "built on this host"


def report_header(setup: Setup, mode: str, out: list[str]) -> None:
    now = datetime.datetime.now().astimezone()
    out.append(f"eximauthd service benchmark ({mode}), {now:%Y-%m-%d %H:%M %Z}")
    out.append(f"  nproc={NCPU}  clients={CONCURRENCY}  python {platform.python_version()}  "
               f"argon2-cffi {metadata.version('argon2-cffi')} "
               f"(bindings {metadata.version('argon2-cffi-bindings')}, {_bindings_build()})")
    out.append(f"  {setup.sodium_text}")
    version = dovecot_version() if setup.dovecot else "-- " + setup.dovecot_problem
    out.append(f"  dovecot {version}; MariaDB {setup.db.admin.get_server_info()}")
    out.append("  req/s: median over rounds.  p50/p99: over every request of the variant.")
    out.append("  Per request (medians over rounds): srvCPU (sys) = CPU ms of the server (the")
    out.append("  eximauthd process; dovecot's process tree; this process for in-process")
    out.append("  variants), of which kernel; cliCPU = the client processes; dbQ = statements")
    out.append("  + pings sent to MariaDB (least of 3 short runs: the server is shared); dbCPU =")
    out.append("  mariadbd CPU ms, scaled to our share of the statements it counted; totCPU =")
    out.append("  srv+cli+db.  bg: CPUs busy with other work on the machine during the windows.")
    out.append("  n: requests measured.  err: wrong or failed answers.")


def report_memory(setup: Setup, out: list[str]) -> None:
    out.append("")
    out.append("PEAK RSS (VmHWM) at the end of the run")
    what = {"prod": f"AUTH {PROD.params}, RELAY", "cached": f"cached AUTH {PROD.params}",
            "cffi": f"AUTH {CFFI.params}",
            "min": f"AUTH {MINIMAL.params}", "plain": "AUTH {PLAIN}", "yes": "bare asyncio"}
    for key, server in setup.servers.items():
        hwm = status_kib(server.pid, "VmHWM") or 0
        label = what.get(key, f"AUTH {PROD.params}, {key[1:]} workers")
        out.append(f"  {server.name:<10} {label:<34} {hwm / 1024:8.1f} MiB")
    if setup.dovecot:
        for pid in [setup.dovecot.pid, *descendants(setup.dovecot.pid)]:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            hwm = status_kib(pid, "VmHWM") or 0
            name = cmd.strip().replace("dovecot-eximauthd-bench/", "")[:34]
            out.append(f"  {'dovecot':<10} {name:<34} {hwm / 1024:8.1f} MiB")
    # [hashing] verify_with = "auto": which library each service timed faster at its start.
    chosen = []
    for server in setup.servers.values():
        with contextlib.suppress(OSError):
            for line in server.logfile.read_text("utf-8", "replace").splitlines():
                if "argon2id verified with" in line:
                    chosen.append(f"  {server.name:<10} {line.split('argon2id ', 1)[1]}")
    if chosen:
        out.append("")
        out.append("ARGON2ID LIBRARY chosen by each service at start (verify_with = auto)")
        out.extend(chosen)


def run(settings: Settings, with_dovecot: bool, mode: str, socket_only: bool = False,
        workers: Sequence[int] = ()) -> str:
    started = time.monotonic()
    out: list[str] = []
    with contextlib.ExitStack() as stack:
        alone = socket_only or bool(workers)
        setup = start_everything(settings, with_dovecot and not alone, stack, socket_only,
                                 workers)
        groups = build_groups(setup, settings, socket_only, workers)
        check_answers(groups)
        meter = Meter(setup.db.admin, setup.clients.pids)
        calibrate(groups, meter)
        for group in groups:
            log(f"measuring {group.title}")
            measure_group(group, settings.rounds, meter)

        report_header(setup, mode, out)
        summary: Summary = []
        for group in groups:
            report_group(group, settings.rounds, out, summary)
        report_summary(summary, out)
        report_memory(setup, out)
        everyone = [a for group in setup.accounts.values() for a in group]
        out.append("")
        out.append(f"stored rows changed by the run: {setup.db.changed_rows(everyone)} "
                   "(0 expected: nothing was rehashed)")
        out.append(f"wall time {time.monotonic() - started:.0f} s")
    return "\n".join(out)


# --- statements per request, from MariaDB's own counters (--statements) ----------------------

STATEMENT_REQUESTS = 20
STATEMENT_USER = "alice@example.test"  # whose password is her address
STATEMENT_HASHING = HashingConfig(memory_cost=8, time_cost=1, parallelism=1, hash_len=16,
                                  salt_len=16)


def _session_counts(raw: Any) -> int:
    """Statements + pings so far on one pooled DBAPI connection, by the server's session
    counters (``Questions`` + ``Com_admin_commands``: COM_PING is an admin command)."""
    with raw.cursor() as cur:
        cur.execute("SHOW SESSION STATUS WHERE Variable_name IN "
                    "('Questions', 'Com_admin_commands')")
        return sum(int(value) for _, value in cur.fetchall())


def _statements_of(url: str, throttle: bool, user: str, password: str) -> float:
    """The statements + pings one AUTH costs, by the session counters of every connection
    the pools opened (read between requests; what reading costs is subtracted)."""
    import sqlalchemy as sa  # noqa: PLC0415

    from eximauthd.core.decision import Decision  # noqa: PLC0415
    from eximauthd.core.protocol import AuthRequest  # noqa: PLC0415
    from eximauthd.db.engine import Database  # noqa: PLC0415
    from eximauthd.service.decider import Decider  # noqa: PLC0415
    from eximauthd.settings import CacheConfig, Config, ThrottleConfig  # noqa: PLC0415

    config = Config(database=DatabaseConfig(url=url), hashing=STATEMENT_HASHING,
                    throttle=ThrottleConfig(enabled=throttle, max_failures_per_ip=10**6,
                                            max_failures_per_user=10**6),
                    cache=CacheConfig(ttl_seconds=0))
    db = Database(config.database)
    raws: list[Any] = []

    def opened(raw: Any, _record: Any) -> None:
        raws.append(raw)

    # Whatever pools this version of the code has (the transactional and the autocommit ones).
    for engine in {getattr(db, n) for n in ("primary", "replica", "auto_primary", "auto_replica")
                   if hasattr(db, n)}:
        sa.event.listen(engine, "connect", opened)
    decider = Decider(config, db)

    def ask(i: int) -> None:
        # Distinct wrong passwords, as a guesser sends them (a repeat would be one row).
        sent = password if password == user else f"{password}-{i}"
        read = decider.defenses.credentials(AuthRequest("PLAIN", user, sent, CLIENT_IP))
        if not isinstance(read, Decision):
            decider.auth(read)

    def counted() -> int:
        return sum(_session_counts(raw) for raw in raws)

    try:
        ask(-1)  # the pools' connections exist before counting
        reading = -counted() + counted()  # what one reading costs
        before = counted()
        known = len(raws)
        for i in range(STATEMENT_REQUESTS):
            ask(i)
        # Successes' reservations taken back in batches are counted too: what is still held
        # is taken back now, inside the count.
        flush = getattr(decider.defenses.throttle, "flush", None)
        if flush is not None:
            flush()
        if len(raws) != known:
            raise RuntimeError("a new connection opened while counting")
        return (counted() - before - reading) / STATEMENT_REQUESTS
    finally:
        decider.close()


def statements_per_request() -> str:
    """Each kind of AUTH run in-process, one at a time, against a fresh MariaDB database."""
    from eximauthd.core.addresses import parse_address  # noqa: PLC0415
    from eximauthd.core.hashing import Hasher  # noqa: PLC0415
    from eximauthd.db import upgrade  # noqa: PLC0415
    from eximauthd.db.accounts import OwnAccountStore  # noqa: PLC0415
    from eximauthd.db.engine import Database  # noqa: PLC0415

    admin = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", autocommit=True)
    name = f"eximauthd_bench_stmt_{os.getpid()}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")  # a generated name
    url = f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    out = ["statements per request (MariaDB session Questions + Com_admin_commands, "
           f"mean of {STATEMENT_REQUESTS} requests one at a time, the throttle's batched "
           "releases included)"]
    try:
        setup = Database(DatabaseConfig(url=url))
        upgrade.upgrade(setup)
        OwnAccountStore(setup).add(parse_address(STATEMENT_USER),
                                   Hasher(STATEMENT_HASHING).hash(STATEMENT_USER))
        setup.dispose()
        for throttle in (False, True):
            for label, user, password in (
                    ("AUTH success, uncached", STATEMENT_USER, STATEMENT_USER),
                    ("AUTH wrong password", STATEMENT_USER, "wrong"),
                    ("AUTH unknown user", "nobody@example.test", "wrong")):
                spent = _statements_of(url, throttle, user, password)
                shown = f"{label}{', throttle on' if throttle else ''}"
                out.append(f"  {shown:40s} {spent:5.2f}")
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()
    return "\n".join(out)

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (~2 min)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--no-dovecot", action="store_true", help="skip the Dovecot comparisons")
    parser.add_argument("--statements", action="store_true",
                        help="only the SQL statements per request, from MariaDB's counters")
    parser.add_argument("--socket", action="store_true",
                        help="only RELAY and cached AUTH against the bare asyncio server")
    parser.add_argument("--workers", metavar="N,N,...",
                        help="only eximauthd with these service.workers, under 4 clients a CPU")
    parser.add_argument("--yes-server", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.statements:
        print(statements_per_request(), flush=True)
        return 0
    workers = [int(n) for n in args.workers.split(",")] if args.workers else []
    if workers:
        global CONCURRENCY  # noqa: PLW0603 -- read by the clients forked in run()
        CONCURRENCY = 4 * NCPU
    if args.yes_server:
        yes_server_main(args.yes_server)
        return 0
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)

    def terminate(signum: int, _frame: object) -> None:
        log(f"{signal.Signals(signum).name}: stopping everything the bench started")
        raise SystemExit(128 + signum)

    # Explicitly for SIGINT too: a shell's background job inherits it ignored.
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    mode = ("quick" if args.quick else "full") + (", socket only" if args.socket else "")
    mode += f", workers {args.workers}" if workers else ""
    print(run(settings, not args.no_dovecot, mode, args.socket, workers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
