"""``eximauthd doctor --smtp`` against a hostile SMTP peer on loopback: a small asyncio server
that plays the attacker (endless replies, silence, a drip, 235 to everything, garbage codes, a
dropped connection, a STARTTLS it never does).  The self-test must end, print no traceback,
never say ok where nothing was refused, never send DATA, and never send the real password
outside TLS."""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from eximauthd.exim.selftest import Session, is_loopback, run

PASSWORD = "correct horse battery staple"
USER = "alice@example.com"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


async def _answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      heard: list[bytes], reply: Callable[[bytes], bytes]) -> None:
    writer.write(b"220 hostile ESMTP\r\n")
    await writer.drain()
    while line := await reader.readline():
        heard.append(line)
        writer.write(reply(line))
        await writer.drain()


def _says(reply: bytes) -> Handler:
    """Every command gets *reply*; EHLO offers AUTH (and no STARTTLS)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     heard: list[bytes]) -> None:
        await _answer_all(reader, writer, heard, lambda line: (
            b"250-hostile\r\n250 AUTH PLAIN LOGIN\r\n" if line[:4].upper() == b"EHLO"
            else b"221 bye\r\n" if line[:4].upper() == b"QUIT" else reply))
    return handle


async def _endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   heard: list[bytes]) -> None:
    """A greeting whose continuation lines never end."""
    while True:
        writer.write(b"220-" + b"x" * 60 + b"\r\n")
        await writer.drain()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  heard: list[bytes]) -> None:
    await reader.read()  # never a byte of greeting


async def _drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                heard: list[bytes]) -> None:
    """One byte of an endless greeting line at a time, each well within the socket timeout."""
    while True:
        writer.write(b"2")
        await writer.drain()
        await asyncio.sleep(0.2)


async def _huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                heard: list[bytes]) -> None:
    writer.write(b"220 " + b"y" * 100_000 + b"\r\n")
    await writer.drain()
    await reader.read()


async def _drops(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 heard: list[bytes]) -> None:
    writer.write(b"220 hostile\r\n")
    await writer.drain()
    heard.append(await reader.readline())
    writer.close()


async def _fake_starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         heard: list[bytes]) -> None:
    """Offers STARTTLS, says 220 to it, then speaks plain text: no TLS is ever reached."""
    await _answer_all(reader, writer, heard, lambda line: (
        b"250-hostile\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n" if line[:4].upper() == b"EHLO"
        else b"220 go ahead\r\n" if line[:8].upper() == b"STARTTLS"
        else b"235 whatever you say\r\n"))


HANDLERS: dict[str, Handler] = {
    "235-to-everything": _says(b"235 2.7.0 you are in\r\n"),
    "250-to-everything": _says(b"250 OK\r\n"),
    "code-999": _says(b"999 refused, honestly\r\n"),
    "code-garbage": _says(b"xyz not a reply\r\n"),
    "multi-line-garbage": _says(b"250-\x1b[2Jok\r\n250-\xff\xfe\r\n250 fine\r\n"),
    "endless-reply": _endless,
    "silent": _silent,
    "drip": _drip,
    "huge-line": _huge,
    "drops": _drops,
    "fake-starttls": _fake_starttls,
}


@dataclass
class Peer:
    port: int
    heard: list[bytes] = field(default_factory=list)


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[Peer]:
    yield from _serving(request.param)


def _serving(name: str) -> Iterator[Peer]:
    handler = HANDLERS[name]
    loop = asyncio.new_event_loop()
    peer = Peer(0)
    started = threading.Event()

    async def serve() -> asyncio.Server:
        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer, peer.heard)
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()
        server = await asyncio.start_server(client, "127.0.0.1", 0, limit=1 << 20)
        peer.port = server.sockets[0].getsockname()[1]
        return server

    def main() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(serve())
        started.set()
        loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    started.wait(10)
    yield peer
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _run_bounded(session: Session) -> list[str]:
    """run(session) in a thread; a self-test still running after 90 s hangs (a generous bound
    for what, with the session's 1 s timeout and 5 s deadline, takes a few seconds)."""
    out: list[object] = []
    worker = threading.Thread(target=lambda: out.append(run(session)), daemon=True)
    worker.start()
    worker.join(90)
    assert not worker.is_alive(), "the SMTP self-test hangs on this peer"
    (results,) = out
    assert isinstance(results, list)
    return [r.line() for r in results]


ALL = sorted(HANDLERS)


@pytest.mark.parametrize("hostile", ALL, indirect=True)
def test_a_hostile_peer_ends_in_result_lines_and_never_an_ok_refusal(hostile: Peer) -> None:
    lines = _run_bounded(Session("127.0.0.1", hostile.port, timeout=1.0, deadline=5.0,
                                 user=USER, password=PASSWORD))
    assert lines
    for line in lines:
        assert "\n" not in line, line
        assert "\x1b" not in line, line
        assert not (line.startswith("ok") and "refused" in line), line
    # Nothing was refused by this peer, so no check may pass but "not offered before STARTTLS".
    assert all(line.startswith(("FAIL", "warn")) for line in lines
               if "AUTH not offered before STARTTLS" not in line), lines
    assert not any(line.strip().upper().startswith(b"DATA") for line in hostile.heard)
    secret = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert not any(secret.encode() in line for line in hostile.heard), \
        "the real password crossed outside TLS"


@pytest.mark.parametrize("hostile", ["235-to-everything", "fake-starttls"], indirect=True)
def test_doctor_against_a_hostile_peer_prints_no_traceback_and_not_the_password(
        hostile: Peer, tmp_path: Path) -> None:
    """The command as an admin runs it, with --user's password on stdin."""
    run_ = subprocess.run(
        [sys.executable, "-m", "eximauthd", "doctor", "--smtp", f"127.0.0.1:{hostile.port}",
         "--user", USER], input=PASSWORD + "\n", capture_output=True, text=True,
        timeout=300, check=False, cwd=tmp_path,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "EXIMAUTHD_CONFIG": str(_config(tmp_path))})
    out = run_.stdout + run_.stderr
    assert run_.returncode == 1, out
    assert "Traceback" not in out
    assert PASSWORD not in out
    assert "\nFAIL smtp" in out


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "eximauthd.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/a.sqlite3"\n'
                    f'[socket]\npath = "{tmp_path}/eximauthd.sock"\n')
    return path


@pytest.mark.parametrize(("smtp", "code", "said"), [
    ("127.0.0.1:\u00b2", 2, "eximauthd: error: --smtp: expected HOST:PORT"),
    ("127.0.0.1:99999", 2, "eximauthd: error: --smtp: expected HOST:PORT"),
    ("a..b:25", 1, "FAIL smtp a..b:25: unauthenticated relay and TLS: UnicodeError"),
], ids=["superscript-port", "port-out-of-range", "host-idna-cannot-encode"])
def test_an_odd_smtp_target_is_one_line_not_a_traceback(tmp_path: Path, smtp: str, code: int,
                                                        said: str) -> None:
    run_ = subprocess.run([sys.executable, "-m", "eximauthd", "doctor", "--smtp", smtp],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                               "EXIMAUTHD_CONFIG": str(_config(tmp_path))})
    out = run_.stdout + run_.stderr
    assert run_.returncode == code, out
    assert "Traceback" not in out
    assert said in out


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("LOCALHOST.", True), ("10.0.0.1", False), ("mx.example.com", False),
    ("localhost.example.com", False), ("127.0.0.1.example.com", False),
])
def test_the_real_password_skips_certificate_checks_only_for_this_host(host: str,
                                                                      loopback: bool) -> None:
    """--user's password goes over unverified TLS only to a loopback name; elsewhere a
    man in the middle with any certificate would receive it."""
    assert is_loopback(host) is loopback


@pytest.fixture
def tls_peer(tmp_path: Path) -> Iterator[Peer]:
    """A peer that does STARTTLS (self-signed certificate) and says yes to everything."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     heard: list[bytes]) -> None:
        writer.write(b"220 hostile ESMTP\r\n")
        while line := await reader.readline():
            heard.append(line)
            verb = line[:8].upper()
            if verb.startswith(b"EHLO"):
                writer.write(b"250-hostile\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n")
            elif verb.startswith(b"STARTTLS"):
                writer.write(b"220 go ahead\r\n")
                await writer.drain()
                await writer.start_tls(context)
                continue
            else:
                writer.write(b"235 yes\r\n")
            await writer.drain()

    HANDLERS["tls-yes-to-all"] = handle
    try:
        yield from _serving("tls-yes-to-all")
    finally:
        del HANDLERS["tls-yes-to-all"]


def test_the_real_password_is_sent_only_inside_tls(tls_peer: Peer) -> None:
    lines = _run_bounded(Session("127.0.0.1", tls_peer.port, timeout=5.0, deadline=30.0,
                                 user=USER, password=PASSWORD))
    assert "ok   smtp: AUTH PLAIN as alice@example.com" in lines
    secret = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    sent = [i for i, line in enumerate(tls_peer.heard) if secret in line]
    assert sent
    for at in sent:
        assert any(line.upper().startswith(b"STARTTLS") for line in tls_peer.heard[:at])


def test_a_certificate_that_does_not_verify_ends_the_session_before_auth(
        tls_peer: Peer) -> None:
    """What --user gets against another host: the self-signed certificate is refused."""
    session = Session("127.0.0.1", tls_peer.port, timeout=5.0, deadline=30.0, user=USER,
                      password=PASSWORD)
    with pytest.raises(ssl.SSLCertVerificationError), session.connect(tls=True, verify=True):
        pass
    assert not any(line.upper().startswith(b"AUTH") for line in tls_peer.heard)
