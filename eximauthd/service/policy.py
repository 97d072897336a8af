"""The Postfix policy front end: ``check_policy_service`` asks here at RCPT TO.

One :class:`asyncio.Protocol` per connection (Postfix keeps one open per smtpd process and sends
request after request); the wire is read by :mod:`eximauthd.core.policyproto`.  An authenticated
request goes through :meth:`Service.decide <eximauthd.service.server.Service.decide>` exactly as
a socket ``RELAY`` does (relay rule, grants, per-user limits and their shared counters, metrics,
one decision line with ``via=postfix``), so Exim and Postfix hosts share accounts and counts.
Postfix's ``instance`` (the same for every recipient of one message) is the transaction that
makes a message count once.

An unauthenticated request gets ``DUNNO``: Postfix's own restrictions decide.  A request that
cannot be read or decided gets ``DEFER_IF_PERMIT``: never ``DUNNO`` on doubt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..core.decision import Decision, Reason
from ..core.policyproto import (
    DEFER_TEXT,
    DUNNO,
    Malformed,
    PolicyReader,
    PolicyRequest,
    format_action,
    policy_action,
)
from ..core.protocol import RelayRequest, is_valid_transaction, parse_client_ip
from ..errors import ProtocolError
from ..settings import PostfixPolicyConfig
from .logs import decision_fields
from .unixsocket import open_listeners

if TYPE_CHECKING:
    from .server import Service

__all__ = ["IDLE_TIMEOUT_S", "READ_TIMEOUT_S", "PostfixPolicyServer", "instance_transaction"]

_log = logging.getLogger("eximauthd.service")
_decisions = logging.getLogger("eximauthd.decision")

# Postfix closes an idle policy connection after smtpd_policy_service_max_idle (300 s); a
# connection silent for longer than this is gone on its side.
IDLE_TIMEOUT_S = 600.0
# Postfix writes a request in one go: a request started and not ended for this long is stuck.
READ_TIMEOUT_S = 10.0
# Requests read ahead of their answers on one connection; beyond this, reading pauses.
MAX_QUEUED = 8
# Replies written and not read: Postfix reads each reply before its next request, so this
# much unread is a client writing requests without reading; it is cut rather than buffered.
MAX_UNREAD_BYTES = 256 * 1024
TRANSPORT = "postfix"


def instance_transaction(instance: str) -> str:
    """The RELAY transaction for Postfix's *instance* (``""`` when it is empty).

    Prefixed, so that it cannot meet an id from Exim's snippets; an instance the RELAY
    transaction syntax cannot carry is replaced by its digest.  Pure.
    """
    if not instance:
        return ""
    readable = f"pf.{instance}"
    if is_valid_transaction(readable):
        return readable
    return "pf." + hashlib.blake2b(instance.encode(), digest_size=16).hexdigest()


class PostfixPolicyServer:
    """Postfix's policy protocol on a Unix socket, and on loopback TCP when configured."""

    def __init__(self, service: Service, config: PostfixPolicyConfig,
                 idle_timeout: float = IDLE_TIMEOUT_S,
                 read_timeout: float = READ_TIMEOUT_S) -> None:
        self.service = service
        self.config = config
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[_Connection] = set()
        self._bound_path = ""
        # prometheus_client's labels() is a lock and a lookup per call: looked up once.
        self._unauthenticated = service.metrics.requests.labels("RELAY", TRANSPORT, "dunno")

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
                                             listen=config.listen, key="postfix_policy")
        self._bound_path = config.path

    async def stop(self) -> None:
        """Stop listening, let requests being decided answer, close every connection."""
        for server in self._servers:
            server.close()
        workers = [c.worker for c in self._connections if c.worker is not None]
        if workers:
            timeout = self.service.config.service.request_timeout_ms / 1000 + 1
            await asyncio.wait(workers, timeout=timeout)
        for connection in list(self._connections):
            connection.close()
        if self._bound_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._bound_path)
        self._servers.clear()

    def _connection(self) -> _Connection:
        return _Connection(self)

    # --- called by the connections ----------------------------------------------------------

    def answer_now(self, request: PolicyRequest | Malformed) -> str | RelayRequest:
        """The action for one request when the event loop can decide it (malformed,
        unauthenticated, the relays the policy settles in memory), else the RELAY for
        :meth:`answer_later`; never raises."""
        try:
            if isinstance(request, Malformed):
                return self._refuse(request.reason)
            attributes = request.attributes
            if not attributes.get("sasl_username"):
                # Not ours to judge: permit_sasl_authenticated does not apply, the rest decides.
                self._unauthenticated.inc()
                return DUNNO
            if attributes.get("protocol_state") != "RCPT":
                # Only RCPT names one recipient per request; elsewhere a message would not be
                # counted right.  A misplaced check_policy_service must show, not let mail
                # through.
                return self._refuse("not-rcpt-state")
            try:
                client_ip = parse_client_ip(attributes.get("client_address", ""))
            except ProtocolError:
                client_ip = ""  # "unknown" or the like: only logs and per-IP keys read it
            relay = RelayRequest(attributes["sasl_username"], attributes.get("sender", ""),
                                 attributes.get("recipient", ""), client_ip,
                                 instance_transaction(attributes.get("instance", "")))
            decision = self.service.decide_now(relay, TRANSPORT)
        except Exception:  # none expected; if one came, still answer, never DUNNO
            _log.exception("internal error while deciding a policy request")
            decision = Decision.defer(Reason.INTERNAL_ERROR)
        return relay if decision is None else policy_action(decision)

    async def answer_later(self, relay: RelayRequest) -> str:
        """The action for a RELAY :meth:`answer_now` could not settle; never raises."""
        try:
            decision = await self.service.decide(relay, transport=TRANSPORT)
        except Exception:  # decide() never raises; if it did, still answer, never DUNNO
            _log.exception("internal error while deciding a policy request")
            decision = Decision.defer(Reason.INTERNAL_ERROR)
        return policy_action(decision)

    async def answer(self, request: PolicyRequest | Malformed) -> str:
        """The action for one request; never raises."""
        action = self.answer_now(request)
        return action if isinstance(action, str) else await self.answer_later(action)

    def unread(self) -> None:
        """Log a client cut for not reading its replies."""
        self.service.metrics.protocol_errors.labels("postfix-replies-unread").inc()
        _decisions.warning("bad request", extra=decision_fields(
            verb="BAD", result="close", reason="replies-unread", via=TRANSPORT))

    def _refuse(self, reason: str) -> str:
        self.service.metrics.protocol_errors.labels(f"postfix-{reason}").inc()
        _decisions.warning("bad request", extra=decision_fields(
            verb="BAD", result="defer", reason=reason, via=TRANSPORT))
        return DEFER_TEXT


class _Connection(asyncio.Protocol):
    """One Postfix policy client: requests in, one action per request out, in order."""

    def __init__(self, owner: PostfixPolicyServer) -> None:
        self._owner = owner
        self._reader = PolicyReader()
        # Requests read and not answered yet; a RELAY is one the loop could not settle.
        self._queue: collections.deque[PolicyRequest | Malformed | RelayRequest] = (
            collections.deque())
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_seen = 0.0
        self._eof = False
        self._paused = False
        self.worker: asyncio.Task[None] | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._owner._connections.add(self)
        self._last_seen = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(self._owner.read_timeout,
                                                            self._timeout_check)

    def data_received(self, data: bytes) -> None:
        self._last_seen = time.monotonic()
        for request in self._reader.feed(data):
            if self._queue or self.worker is not None:
                self._queue.append(request)  # answered in order, after those before it
                continue
            # With nothing before it, what the loop can decide is answered at once: no task.
            action = self._owner.answer_now(request)
            if isinstance(action, str):
                if not self._send(action):
                    return
            else:
                self._queue.append(action)
        if len(self._queue) >= MAX_QUEUED and not self._paused and self._open:
            assert self._transport is not None
            self._transport.pause_reading()
            self._paused = True
        if self._queue and self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())

    def eof_received(self) -> bool:
        self._eof = True
        # A request cut short gets no answer; the ones read in full still do.
        return self.worker is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None

    # --- answering ---------------------------------------------------------------------------

    @property
    def _open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def _send(self, action: str) -> bool:
        """Write the reply of *action*; False when the connection is gone or was cut."""
        transport = self._transport  # the client may have gone while it was decided
        if transport is None or transport.is_closing():
            return False
        transport.write(format_action(action))
        if transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            self._owner.unread()
            transport.abort()
            return False
        self._last_seen = time.monotonic()
        return True

    async def _work(self) -> None:
        try:
            while self._queue and self._open:
                queued = self._queue.popleft()
                if isinstance(queued, RelayRequest):
                    action = await self._owner.answer_later(queued)
                else:
                    action = await self._owner.answer(queued)
                if not self._send(action):
                    return
                if self._paused and len(self._queue) < MAX_QUEUED:
                    assert self._transport is not None  # _send saw it open
                    self._transport.resume_reading()
                    self._paused = False
        finally:
            self.worker = None
            if self._eof:
                self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _timeout_check(self) -> None:
        idle = time.monotonic() - self._last_seen
        limit = (self._owner.read_timeout if self._reader.mid_request
                 else self._owner.idle_timeout)
        if idle >= limit and self.worker is None:
            self._timer = None
            self.close()
            return
        wait = max(0.5, min(limit - idle, self._owner.read_timeout))
        self._timer = asyncio.get_running_loop().call_later(wait, self._timeout_check)
