"""A bug in the service's bookkeeping must cost the client one temporary refusal, never a
connection left open with nobody to answer it (Exim's dovecot driver has no read timeout).

In process, on SQLite: the fault is injected by a Service whose decision accounting raises,
after a real decision (real database, real pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eximauthd.service.dovecot import DovecotAuthServer
from eximauthd.service.server import Service, _Connection
from eximauthd.settings import DovecotAuthConfig

from ..support import config_for, populate

_WAIT_S = 10.0  # far longer than any answer takes: reaching it means no answer came


class _BrokenAccounting(Service):
    """A Service whose bookkeeping fails after every decision (the injected bug)."""

    def _account(self, *_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("injected accounting bug")


@pytest.fixture
def broken(sqlite_url: str) -> Iterator[Service]:
    populate(sqlite_url)
    service = _BrokenAccounting(config_for(sqlite_url))
    try:
        yield service
    finally:
        service.decider.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="eadf-", dir="/tmp") as name:
        yield Path(name)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), _WAIT_S)


def test_readsocket_request_decided_by_a_task_is_answered_defer(broken: Service,
                                                                 socket_dir: Path) -> None:
    """PING goes through the worker pool and a task: the bug there answers defer and closes."""
    path = str(socket_dir / "s.sock")

    async def run() -> bytes:
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: _Connection(broken), path)
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"PING\n")
            answer = await _read_all(reader)
            writer.close()
            return answer
        finally:
            server.close()
            await asyncio.sleep(0)

    answer = asyncio.run(run())
    assert answer.startswith(b"defer "), answer


@pytest.mark.parametrize("password", [b"", b"wrong"])
def test_dovecot_check_that_raises_closes_the_connection(broken: Service, socket_dir: Path,
                                                         password: bytes) -> None:
    """An empty password (decided on the loop) and a wrong one (in the pool): the bug closes
    the connection (the MTA answers 4xx); no OK, no FAIL, no hang."""
    import base64  # noqa: PLC0415

    resp = base64.b64encode(b"\0alice@example.test\0" + password).decode()
    config = DovecotAuthConfig(enabled=True, path=str(socket_dir / "d.sock"))

    async def run() -> bytes:
        front = DovecotAuthServer(broken, config)
        await front.start()
        try:
            reader, writer = await asyncio.open_unix_connection(config.path)
            await asyncio.wait_for(reader.readuntil(b"DONE\n"), _WAIT_S)
            writer.write(f"VERSION\t1\t0\nCPID\t7\nAUTH\t1\tPLAIN\tservice=smtp\t"
                         f"resp={resp}\n".encode())
            answer = await _read_all(reader)
            writer.close()
            return answer
        finally:
            with contextlib.suppress(Exception):
                await front.stop()

    answer = asyncio.run(run())
    assert answer == b"", answer
