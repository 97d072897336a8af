"""The Dovecot auth-client front end: Exim's ``dovecot`` driver and Postfix's SASL ask here.

One :class:`asyncio.Protocol` per connection, no task per connection; timers through
``loop.call_later``.  The wire is read by :mod:`eximauthd.core.dovecot`; every credential goes
through :meth:`Service.decide <eximauthd.service.server.Service.decide>` exactly as a socket
``AUTH`` does (throttle, cache, padding, metrics, one decision line with ``via=dovecot``).

A ``defer`` (database down, overloaded, timeout) closes the connection: the MTA answers with a
temporary error (Exim 435, Postfix 454).  It is never FAIL (a permanent 535) and never OK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from ..core.decision import Decision
from ..core.dovecot import MAX_LINE_BYTES, Check, Close, Reply, Session, handshake
from ..core.protocol import AuthRequest
from ..settings import DovecotAuthConfig
from .logs import decision_fields
from .unixsocket import open_listeners

if TYPE_CHECKING:
    from .server import Service

__all__ = ["IDLE_TIMEOUT_S", "DovecotAuthServer"]

_log = logging.getLogger("eximauthd.service")
_decisions = logging.getLogger("eximauthd.decision")

# A connection with no traffic for this long is closed.  Postfix keeps one per smtpd process
# and reconnects by itself; Exim uses a connection per AUTH.
IDLE_TIMEOUT_S = 600.0
# Replies queued for a client that does not read them: an MTA reads every reply before its
# next request, so this much unread means a client flooding requests; it is disconnected.
MAX_UNREAD_BYTES = 256 * 1024
TRANSPORT = "dovecot"


class DovecotAuthServer:
    """Dovecot's auth-client protocol on a Unix socket, and on loopback TCP when configured."""

    def __init__(self, service: Service, config: DovecotAuthConfig,
                 idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self.service = service
        self.config = config
        self.idle_timeout = idle_timeout
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[_Connection] = set()
        self._checks: set[asyncio.Task[None]] = set()
        self._cuid = 0
        self._bound_path = ""

    @property
    def where(self) -> str:
        """Where it listens, for the start-up line."""
        path = os.path.abspath(self.config.path)
        return f"{path},tcp:{self.config.listen}" if self.config.listen else path

    async def start(self) -> None:
        """Listen; :raises ConfigError: the socket or the TCP address cannot be used."""
        config = self.config
        self._servers = await open_listeners(self._connection, path=config.path,
                                             mode=config.mode, group=config.group,
                                             listen=config.listen, key="dovecot_auth")
        self._bound_path = config.path

    async def stop(self) -> None:
        """Stop listening, let running checks answer, close every connection."""
        for server in self._servers:
            server.close()
        if self._checks:
            timeout = self.service.config.service.request_timeout_ms / 1000 + 1
            await asyncio.wait(list(self._checks), timeout=timeout)
        for connection in list(self._connections):
            connection.close()
        if self._bound_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._bound_path)
        self._servers.clear()

    def _connection(self) -> _Connection:
        self._cuid += 1
        return _Connection(self, self._cuid)

    # --- called by the connections ----------------------------------------------------------

    def check(self, connection: _Connection, check: Check) -> None:
        task = asyncio.get_running_loop().create_task(self._check(connection, check))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check(self, connection: _Connection, check: Check) -> None:
        request = AuthRequest(check.mechanism, check.username, check.password, check.client_ip)
        decision = await self.service.decide(request, transport=TRANSPORT)
        connection.decided(check, decision)

    def refused(self, reply: Reply) -> None:
        """Log a FAIL the protocol sent without a credential check."""
        self.service.metrics.requests.labels("AUTH", TRANSPORT, "no").inc()
        _decisions.info("decision", extra=decision_fields(
            verb="AUTH", mech=reply.mechanism, client=reply.client_ip, result="no",
            reason=reply.refused, via=TRANSPORT))

    def protocol_error(self, reason: str) -> None:
        self.service.metrics.protocol_errors.labels(f"dovecot-{reason}").inc()
        _decisions.warning("bad request", extra=decision_fields(
            verb="BAD", result="close", reason=reason, via=TRANSPORT))


class _Connection(asyncio.Protocol):
    """One client: lines in, the session's actions out."""

    def __init__(self, owner: DovecotAuthServer, cuid: int) -> None:
        self._owner = owner
        self._cuid = cuid
        self._session = Session()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_seen = 0.0
        self._eof = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._owner._connections.add(self)
        # Unprompted: Exim reads up to DONE before it writes anything.
        transport.write(handshake(os.getpid(), self._cuid, secrets.token_hex(16)))
        self._last_seen = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(self._owner.idle_timeout,
                                                            self._idle_check)

    def data_received(self, data: bytes) -> None:
        self._last_seen = time.monotonic()
        self._buffer += data
        while self._open:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) >= MAX_LINE_BYTES:
                    self._do(self._session.receive(bytes(self._buffer)))
                return
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            self._do(self._session.receive(line))

    def eof_received(self) -> bool:
        self._eof = True
        # Keep the connection open to answer the checks still running; close after them.
        return self._session.checking > 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None

    # --- the session's actions -----------------------------------------------------------------

    @property
    def _open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def _do(self, actions: list[Reply | Close | Check]) -> None:
        for action in actions:
            if not self._open:
                return
            match action:
                case Reply():
                    if action.refused:
                        self._owner.refused(action)
                    self._write(action.data)
                case Check():
                    self._owner.check(self, action)
                case Close():
                    self._owner.protocol_error(action.reason)
                    self.close()

    def decided(self, check: Check, decision: Decision) -> None:
        """The check of *check* answered: reply, or close on defer."""
        action = self._session.decided(check.request_id, decision, check.username)
        if not self._open:
            return
        if isinstance(action, Close):
            self.close()  # the decision line already says defer and why
            return
        if action is not None:
            self._write(action.data)
        if self._eof and self._session.checking == 0:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        assert self._transport is not None  # callers checked _open
        self._transport.write(data)
        if self._transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            self._owner.protocol_error("replies-unread")
            self._transport.abort()

    def _idle_check(self) -> None:
        idle = time.monotonic() - self._last_seen
        if idle >= self._owner.idle_timeout and self._session.checking == 0:
            self._timer = None
            self.close()
            return
        wait = max(1.0, self._owner.idle_timeout - idle)
        self._timer = asyncio.get_running_loop().call_later(wait, self._idle_check)
