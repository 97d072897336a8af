"""A real 3-node MariaDB Galera cluster on loopback, for the tests that need one.

Each node is its own ``mariadbd`` process (Debian's MariaDB with galera-4), with its own datadir
under one temporary directory, its own socket, and free loopback ports for SQL, group
communication, IST and rsync SST.  No container, and the system MariaDB on 3306 is never touched.
Only the processes started here are ever signalled, by their pid.

The group-communication timeouts are shortened (a killed node is declared gone after ~3 s
instead of ~15 s) so that the failure tests stay short; everything else is Galera's default.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import pytest

from .support import in_ci

__all__ = ["GaleraCluster", "GaleraNode", "galera_available", "require_galera"]

PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
MARIADBD = Path("/usr/sbin/mariadbd")
INSTALL_DB = "mariadb-install-db"
# Faster failure detection than the defaults (PT5S/PT15S), still well above loopback jitter.
# As root, the nodes run as Debian's mysql user (see start()).
_USER = "mysql" if os.geteuid() == 0 else os.environ.get("USER", "")
_EVS = ("evs.keepalive_period=PT0.5S;evs.suspect_timeout=PT2S;evs.inactive_timeout=PT4S;"
        "evs.inactive_check_period=PT0.5S;evs.install_timeout=PT4S;"
        "evs.join_retrans_period=PT0.5S;gcache.size=32M")


def galera_available() -> str:
    """Empty when a cluster can be started here, else what is missing."""
    if not PROVIDER.exists():
        return f"{PROVIDER} missing (apt-get install galera-4)"
    if not MARIADBD.exists():
        return f"{MARIADBD} missing (apt-get install mariadb-server)"
    for tool in (INSTALL_DB, "rsync", "wsrep_sst_rsync"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    return ""


def require_galera() -> None:
    missing = galera_available()
    if not missing:
        return
    if in_ci():
        pytest.fail(f"Galera cannot start: {missing} (CI=true: a missing service fails the run)")
    pytest.skip(f"Galera cannot start: {missing}")


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all are picked, so that no two are the same port.
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class GaleraNode:
    """One node: its ports, files and (while it runs) its process."""

    index: int
    base: Path
    port: int
    gcomm_port: int
    ist_port: int
    sst_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def datadir(self) -> Path:
        return self.base / f"node{self.index}"

    @property
    def socket_path(self) -> Path:
        return self.base / f"node{self.index}.sock"

    @property
    def config_path(self) -> Path:
        return self.base / f"node{self.index}.cnf"

    @property
    def log_path(self) -> Path:
        return self.base / f"node{self.index}.err"

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def connect(self, timeout: int = 2) -> pymysql.Connection:  # type: ignore[type-arg]
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root",
                               connect_timeout=timeout, read_timeout=10, write_timeout=10,
                               autocommit=True)

    def status(self, name: str) -> str:
        """A wsrep status variable, or "" when the node does not answer."""
        try:
            with contextlib.closing(self.connect(1)) as conn, conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
                row = cur.fetchone()
                return str(row[1]) if row else ""
        except pymysql.MySQLError:
            return ""

    def synced(self) -> bool:
        return (self.status("wsrep_local_state_comment") == "Synced"
                and self.status("wsrep_ready") == "ON")


class GaleraCluster:
    """Three nodes; :meth:`start` bootstraps node 0 and joins the others (rsync SST)."""

    def __init__(self, size: int = 3, base: Path | None = None, *, wsrep: bool = True) -> None:
        """*wsrep* False: plain MariaDB servers with the same settings (a bench's baseline)."""
        self.wsrep = wsrep
        self.base = base or Path(tempfile.mkdtemp(prefix="galera-", dir="/tmp"))
        ports = _free_ports(4 * size)
        self.nodes = [GaleraNode(i, self.base, *ports[4 * i:4 * i + 4]) for i in range(size)]

    def __repr__(self) -> str:
        return f"GaleraCluster({[n.port for n in self.nodes]})"

    @property
    def address(self) -> str:
        return "gcomm://" + ",".join(f"127.0.0.1:{n.gcomm_port}" for n in self.nodes)

    def _write_config(self, node: GaleraNode) -> None:
        options = (f"gmcast.listen_addr=tcp://127.0.0.1:{node.gcomm_port};"
                   f"ist.recv_addr=127.0.0.1:{node.ist_port};{_EVS}")
        wsrep = f"""wsrep_on=ON
wsrep_provider={PROVIDER}
wsrep_cluster_name=eximauthd_test
wsrep_cluster_address={self.address}
wsrep_node_name=node{node.index}
wsrep_node_address=127.0.0.1:{node.gcomm_port}
wsrep_node_incoming_address=127.0.0.1:{node.port}
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:{node.sst_port}
wsrep_provider_options="{options}"
wsrep_slave_threads=2
""" if self.wsrep else ""
        node.config_path.write_text(f"""[mariadbd]
user={_USER}
datadir={node.datadir}
socket={node.socket_path}
pid-file={self.base}/node{node.index}.pid
log-error={node.log_path}
port={node.port}
bind-address=127.0.0.1
skip-name-resolve
performance_schema=OFF
innodb_buffer_pool_size=32M
innodb_log_file_size=16M
innodb_flush_log_at_trx_commit=2
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
{wsrep}""", "ascii")

    def start(self, timeout: float = 120.0) -> None:
        """Install a datadir per node, bootstrap node 0, join the others, wait for Synced."""
        first = self.nodes[0]
        for node in self.nodes:
            node.datadir.mkdir(parents=True)  # a joiner's stays empty: it gets all by SST
        if os.geteuid() == 0:
            # As root the SST's rsync daemon drops to "nobody": run the nodes as mysql instead.
            for path in [self.base, *(n.datadir for n in self.nodes)]:
                shutil.chown(path, _USER, _USER)
        subprocess.run([INSTALL_DB, "--no-defaults", f"--user={_USER}",
                        "--auth-root-authentication-method=normal",
                        f"--datadir={first.datadir}", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        for node in self.nodes:
            self._write_config(node)
        self.start_node(0, bootstrap=True, timeout=timeout)
        for i in range(1, len(self.nodes)):
            self.start_node(i, timeout=timeout)

    def start_node(self, index: int, *, bootstrap: bool = False, timeout: float = 120.0) -> None:
        node = self.nodes[index]
        if bootstrap:
            grastate = node.datadir / "grastate.dat"
            if grastate.exists():
                # After a whole-cluster crash no node is marked safe; this one is chosen.
                text = grastate.read_text("ascii")
                grastate.write_text(re.sub(r"safe_to_bootstrap:\s*0", "safe_to_bootstrap: 1",
                                           text), "ascii")
        args = [str(MARIADBD), f"--defaults-file={node.config_path}"]
        if bootstrap and self.wsrep:
            args.append("--wsrep-new-cluster")
        with (self.base / f"node{index}.out").open("ab") as out:
            node.process = subprocess.Popen(args, stdout=out, stderr=out,
                                            start_new_session=True)
        self.wait_synced(index, timeout)

    def wait_synced(self, index: int, timeout: float = 120.0) -> None:
        node = self.nodes[index]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.running():
                raise RuntimeError(f"galera node{index} exited:\n{self.tail(index)}")
            # A plain MariaDB (wsrep=False) is ready once it answers.
            if node.synced() if self.wsrep else node.status("Uptime"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"galera node{index} not Synced in {timeout} s:\n{self.tail(index)}")

    def wait_size(self, size: int, timeout: float = 60.0) -> None:
        """Wait until every running node sees a primary component of *size* nodes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.running()]
            if all(n.status("wsrep_cluster_size") == str(size) and n.synced() for n in live):
                return
            time.sleep(0.2)
        raise RuntimeError(f"galera cluster not at size {size} in {timeout} s")

    def kill(self, index: int) -> None:
        """SIGKILL one node (its own pid, nothing else)."""
        node = self.nodes[index]
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(30)

    def tail(self, index: int, lines: int = 30) -> str:
        path = self.nodes[index].log_path
        if not path.exists():
            return ""
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])

    def create_database(self, name: str) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(name)
        with contextlib.closing(self.nodes[0].connect()) as conn, conn.cursor() as cur:
            # A name made by the test, checked above: DDL cannot take a parameter.
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and remove the files."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(30)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(10)
        # rsync daemons an SST left behind are children of the nodes' sessions.
        if not os.environ.get("ETEST_GALERA_KEEP"):
            shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def galera_cluster(size: int = 3) -> Iterator[GaleraCluster]:
    require_galera()
    cluster = GaleraCluster(size)
    try:
        try:
            cluster.start()
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            message = f"Galera cluster did not start: {exc}"
            if in_ci() or os.environ.get("ETEST_GALERA_REQUIRED"):
                pytest.fail(message)
            pytest.skip(message)
        yield cluster
    finally:
        cluster.stop()
