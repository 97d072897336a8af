"""Start a real ``eximauthd serve`` subprocess and talk to it as Exim does."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .support import FAST_HASHING_ENV


def b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8", "surrogateescape")).decode("ascii")


def auth_line(user: str, password: str, ip: str = "192.0.2.10", mech: str = "PLAIN") -> bytes:
    return f"AUTH {mech} {b64(user)} {b64(password)} {ip}\n".encode()


def relay_line(user: str, sender: str, rcpt: str, ip: str = "192.0.2.10") -> bytes:
    return f"RELAY {b64(user)} {b64(sender)} {b64(rcpt)} {ip}\n".encode()


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before in this run.

    The kernel may give the same ephemeral port to two binds in a row once the first socket
    is closed, so a test that asks for two ports (HTTP and a front end) could get one twice.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def ask(path: str, data: bytes, *, shutdown: bool = True, timeout: float = 10.0) -> bytes:
    """One request the way ${readsocket} makes it: connect, write, shut down, read to EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


@dataclass
class Served:
    """A running service: its socket, HTTP base URL, log file and process."""

    process: subprocess.Popen[bytes]
    socket_path: str
    http_url: str
    log_path: Path
    env: dict[str, str] = field(repr=False)
    cwd: Path = field(default=Path("."))

    def http_token(self) -> str:
        """The bearer token the service uses: inline, or from its (possibly created) file."""
        if self.env.get("EXIMAUTHD_HTTP_TOKEN"):
            return self.env["EXIMAUTHD_HTTP_TOKEN"]
        path = self.cwd / self.env.get("EXIMAUTHD_HTTP_TOKEN_FILE", "eximauthd-http.token")
        return path.read_text("ascii").rstrip("\n")

    def http_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.http_token()}"}

    def ask(self, data: bytes, **kwargs: object) -> bytes:
        return ask(self.socket_path, data, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise
        return self.process.returncode


def start_service(db_url: str, *, extra_env: dict[str, str] | None = None,
                  workdir: Path | None = None, wait: bool = True,
                  log_file: Path | None = None,
                  open_files: tuple[int, int] | None = None) -> Served:
    """Start ``eximauthd serve`` on *db_url* with a socket in a short temporary directory.

    *open_files*: the child's (soft, hard) descriptor limit, set by util-linux ``prlimit``
    (which then execs the service, so the pid is the service's).
    """
    # sun_path is 108 bytes: pytest's tmp_path can be longer than that.
    base = Path(tempfile.mkdtemp(prefix="ead-", dir="/tmp"))
    base.chmod(0o755)  # Exim (as Debian-exim) must reach the socket; the socket itself is 0660
    socket_path = (extra_env or {}).get("EXIMAUTHD_SOCKET_PATH", str(base / "eximauthd.sock"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env |= FAST_HASHING_ENV | {
        "EXIMAUTHD_DATABASE_URL": db_url,
        "EXIMAUTHD_DATABASE_CONNECT_TIMEOUT": "1",
        "EXIMAUTHD_SOCKET_PATH": socket_path,
        "EXIMAUTHD_HTTP_LISTEN": f"127.0.0.1:{port}",
    } | (extra_env or {})
    log_path = log_file or base / "service.log"
    args = ["--log-file", str(log_file)] if log_file else []
    limit = ["prlimit", f"--nofile={open_files[0]}:{open_files[1]}"] if open_files else []
    with (base / "stderr.log").open("wb") as stderr, log_path.open("ab") as log:
        process = subprocess.Popen(
            [*limit, sys.executable, "-m", "eximauthd", "serve", *args], env=env,
            stdout=log if not log_file else stderr, stderr=log if not log_file else stderr,
            cwd=workdir or base,
        )
    served = Served(process, socket_path, f"http://127.0.0.1:{port}", log_path, env,
                    workdir or base)
    if wait:
        wait_ready(served)
    return served


def wait_ready(served: Served, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise RuntimeError(f"eximauthd serve exited {served.process.returncode}:\n"
                               + served.log())
        with contextlib.suppress(OSError):
            if served.ask(b"PING\n", timeout=2) in {b"yes\n", b"defer database-unavailable\n"} \
                    and "serving socket=" in served.log():
                return
        time.sleep(0.05)
    served.stop()
    raise RuntimeError("eximauthd serve did not become ready:\n" + served.log())


@contextlib.contextmanager
def running(db_url: str, **kwargs: object) -> Iterator[Served]:
    served = start_service(db_url, **kwargs)  # type: ignore[arg-type]
    try:
        yield served
    finally:
        served.stop()
        shutil.rmtree(Path(served.socket_path).parent, ignore_errors=True)


class TcpProxy:
    """A loopback TCP forwarder we can cut and restore: a database that 'goes away'."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        with self._lock:
            if self._listener is not None:
                # close() alone does not wake a thread blocked in accept(); shutdown() does.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def http_call(served: Served, method: str, path: str, body: Any = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request; the service's bearer token is sent unless *headers* say otherwise."""
    data = None if body is None else (body if isinstance(body, bytes)
                                      else json.dumps(body).encode())
    sent = served.http_headers() if headers is None else headers
    request = urllib.request.Request(served.http_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **sent})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    if path == "/metrics":
        return status, raw.decode()
    return status, json.loads(raw) if raw else None


def relay(served: Served, user: str, txn: str = "") -> bytes:
    line = relay_line(user, user, "someone@remote.test")
    return served.ask(line[:-1] + (f" {txn}".encode() if txn else b"") + b"\n")


class DovecotClient:
    """A client of the service's Dovecot auth-client protocol, as Exim and Postfix speak it:
    connect, read the server's handshake up to DONE, then send VERSION, CPID and AUTH lines."""

    def __init__(self, address: str | tuple[str, int], timeout: float = 10.0,
                 opening: bool = True) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self._buffer = bytearray()
        self.handshake: list[str] = []
        while (line := self.read_line()) not in {"DONE", None}:
            self.handshake.append(line)
        if opening:
            self.send(b"VERSION\t1\t0\nCPID\t4242\n")

    def __enter__(self) -> DovecotClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def read_line(self) -> str | None:
        """The next line without its newline; None when the server closed the connection."""
        while (end := self._buffer.find(b"\n")) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line = bytes(self._buffer[:end]).decode()
        del self._buffer[:end + 1]
        return line

    def auth(self, request_id: int, mech: str, resp: str | None, *,
             rip: str = "192.0.2.10") -> str | None:
        """Send one AUTH (``resp=`` left out when *resp* is None) and read one reply."""
        tail = "" if resp is None else f"\tresp={resp}"
        self.send(f"AUTH\t{request_id}\t{mech}\tservice=smtp\tlip=127.0.0.1\trip={rip}"
                  f"\tnologin{tail}\n")
        return self.read_line()

    def close(self) -> None:
        self.sock.close()


def plain_resp(user: str, password: str, authzid: str = "") -> str:
    """SASL PLAIN's message, base64: authzid NUL user NUL password."""
    return b64(f"{authzid}\0{user}\0{password}")


def dovecot_env(path: str, listen: str = "") -> dict[str, str]:
    """The service's environment for the Dovecot front end at *path* (and TCP *listen*)."""
    env = {"EXIMAUTHD_DOVECOT_AUTH_ENABLED": "true", "EXIMAUTHD_DOVECOT_AUTH_PATH": path}
    return env | ({"EXIMAUTHD_DOVECOT_AUTH_LISTEN": listen} if listen else {})


# What Postfix 3.7 sends at RCPT TO, in its order (docs/postfix.md); request() fills it in.
POSTFIX_ATTRIBUTES = (
    "request", "protocol_state", "protocol_name", "client_address", "client_name",
    "client_port", "reverse_client_name", "server_address", "server_port", "helo_name",
    "sender", "recipient", "recipient_count", "queue_id", "instance", "size", "etrn_domain",
    "stress", "sasl_method", "sasl_username", "sasl_sender", "ccert_subject", "ccert_issuer",
    "ccert_fingerprint", "ccert_pubkey_fingerprint", "encryption_protocol",
    "encryption_cipher", "encryption_keysize", "policy_context",
)


def policy_request(sasl_username: str, sender: str, recipient: str = "someone@remote.test",
                   instance: str = "1a2b.6565f3c1.a4c2d.0", **more: str) -> bytes:
    """One request with the exact attribute set Postfix 3.7 sends at RCPT TO."""
    values = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
              "protocol_name": "ESMTP", "client_address": "192.0.2.10",
              "client_name": "client.test", "client_port": "41234",
              "reverse_client_name": "client.test", "server_address": "127.0.0.1",
              "server_port": "587", "helo_name": "client.test", "sender": sender,
              "recipient": recipient, "recipient_count": "0", "instance": instance,
              "size": "0", "sasl_method": "PLAIN" if sasl_username else "",
              "sasl_username": sasl_username, "encryption_keysize": "0"} | more
    lines = "".join(f"{name}={values.get(name, '')}\n" for name in POSTFIX_ATTRIBUTES)
    return (lines + "\n").encode()


class PolicyClient:
    """A client of the service's Postfix policy protocol: one long-lived connection."""

    def __init__(self, address: str | tuple[str, int], timeout: float = 10.0) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self._buffer = bytearray()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_reply(self) -> str | None:
        """The next reply up to its empty line, without it; None when the server closed."""
        while (end := self._buffer.find(b"\n\n")) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        reply = bytes(self._buffer[:end]).decode()
        del self._buffer[:end + 2]
        return reply

    def ask(self, data: bytes) -> str | None:
        self.send(data)
        return self.read_reply()


def policy_env(path: str, listen: str = "") -> dict[str, str]:
    """The service's environment for the Postfix policy front end at *path* (and *listen*)."""
    env = {"EXIMAUTHD_POSTFIX_POLICY_ENABLED": "true", "EXIMAUTHD_POSTFIX_POLICY_PATH": path}
    return env | ({"EXIMAUTHD_POSTFIX_POLICY_LISTEN": listen} if listen else {})
