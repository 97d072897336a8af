"""``eximauthd doctor --user`` must not hand the real password to whatever answers on the
configured socket: another local user who binds that path first (the built-in default socket
is in the working directory) answers PING with "yes" like the service."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

USER, PASSWORD = "alice@example.com", "correct horse battery staple"

# The impostor: answers "yes" to every line and writes down what it was sent.
IMPOSTOR = """
import socket, sys
path, log = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(8)
while True:
    conn, _ = server.accept()
    data = conn.recv(4096)
    with open(log, "ab") as out:
        out.write(data)
    conn.sendall(b"yes\\n")
    conn.close()
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory like /tmp: root's, sticky, writable by everyone."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the impostor as another user")
    base = Path(tempfile.mkdtemp(prefix="eximauthd-doctor-", dir="/tmp"))
    base.chmod(0o1777)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_the_password_is_not_sent_to_a_socket_another_user_serves(shared_dir: Path) -> None:
    sock, log = shared_dir / "eximauthd.sock", shared_dir / "heard"
    log.touch()
    log.chmod(0o666)
    impostor = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup",
                                 "--clear-groups", sys.executable, "-c", IMPOSTOR, str(sock),
                                 str(log)])
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        config = shared_dir / "eximauthd.toml"
        config.write_text(f'[database]\nurl = "sqlite:///{shared_dir}/a.sqlite3"\n'
                          f'[socket]\npath = "{sock}"\n[http]\nenabled = false\n')
        run = subprocess.run([sys.executable, "-m", "eximauthd", "--config", str(config),
                              "doctor", "--user", USER], input=PASSWORD + "\n",
                             capture_output=True, text=True, timeout=120, check=False,
                             cwd=shared_dir)
    finally:
        impostor.kill()
        impostor.wait()
    out = run.stdout + run.stderr
    assert f"ok   PING on {sock}: yes" in out
    assert (f"FAIL AUTH PLAIN {USER} on the socket: not tried: its process runs as uid "
            f"{_uid('nobody')}") in out
    secret = base64.b64encode(PASSWORD.encode()).decode()
    assert secret.encode() not in log.read_bytes()
    assert run.returncode == 1
    assert "Traceback" not in out


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


# The Dovecot impostor: greets as eximauthd's Dovecot socket does, says OK to everything and
# writes down what it was sent.
DOVECOT_IMPOSTOR = """
import socket, sys
path, log = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(8)
while True:
    conn, _ = server.accept()
    conn.sendall(b"VERSION\\t1\\t2\\nMECH\\tPLAIN\\tplaintext\\nMECH\\tLOGIN\\tplaintext\\n"
                 b"SPID\\t1\\nCUID\\t1\\nCOOKIE\\t" + b"0" * 32 + b"\\nDONE\\n")
    conn.settimeout(2)
    data = b""
    try:
        while b"AUTH" not in data and (chunk := conn.recv(4096)):
            data += chunk
    except OSError:
        pass
    with open(log, "ab") as out:
        out.write(data)
    try:
        conn.sendall(b"OK\\t1\\tuser=alice@example.com\\n")
    except OSError:
        pass
    conn.close()
"""


def test_the_password_is_not_sent_to_a_dovecot_socket_another_user_serves(
        shared_dir: Path) -> None:
    """The same for [dovecot_auth]'s socket: the impostors serve both paths."""
    sock, dovecot = shared_dir / "eximauthd.sock", shared_dir / "dovecot-auth.sock"
    log = shared_dir / "heard"
    log.touch()
    log.chmod(0o666)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                 sys.executable, "-c"]
    impostors = [subprocess.Popen([*as_nobody, IMPOSTOR, str(sock), str(log)]),
                 subprocess.Popen([*as_nobody, DOVECOT_IMPOSTOR, str(dovecot), str(log)])]
    try:
        for _ in range(100):
            if sock.exists() and dovecot.exists():
                break
            time.sleep(0.05)
        config = shared_dir / "eximauthd.toml"
        config.write_text(f'[database]\nurl = "sqlite:///{shared_dir}/a.sqlite3"\n'
                          f'[socket]\npath = "{sock}"\n[http]\nenabled = false\n'
                          f'[dovecot_auth]\nenabled = true\npath = "{dovecot}"\n')
        run = subprocess.run([sys.executable, "-m", "eximauthd", "--config", str(config),
                              "doctor", "--user", USER], input=PASSWORD + "\n",
                             capture_output=True, text=True, timeout=120, check=False,
                             cwd=shared_dir)
    finally:
        for impostor in impostors:
            impostor.kill()
            impostor.wait()
    out = run.stdout + run.stderr
    assert (f"FAIL AUTH PLAIN {USER} on the Dovecot socket: not tried: its process runs as "
            f"uid {_uid('nobody')}") in out, out
    heard = log.read_bytes()
    assert base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) not in heard
    assert PASSWORD.encode() not in heard
    assert run.returncode == 1
    assert "Traceback" not in out
