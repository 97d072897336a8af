"""``eximauthd serve``: one asyncio process with the Unix socket for Exim and the HTTP API.

The event loop only moves bytes.  argon2 and database work run in a bounded thread pool
(argon2-cffi releases the GIL), each request under a deadline shorter than Exim's readsocket
timeout.  When the pool is saturated the answer is ``defer overloaded`` at once rather than a
queue without bound; when anything goes wrong the answer is ``defer``: never ``yes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import uvicorn

from ..core.decision import Decision, Reason, Result
from ..core.policy import read_relay
from ..core.protocol import (
    MAX_REQUEST_BYTES,
    AuthRequest,
    ForgetRequest,
    PingRequest,
    RelayRequest,
    Request,
    format_reply,
    parse_request,
)
from ..errors import ConfigError, ProtocolError
from ..settings import Config
from . import httpguard, secretfile
from .decider import Decider
from .http import create_app
from .logs import decision_fields
from .metrics import Metrics
from .unixsocket import BACKLOG, bind_unix_socket, prepare_socket_path

__all__ = ["Frontend", "Service", "prepare_socket_path"]

_log = logging.getLogger("eximauthd.service")
_decisions = logging.getLogger("eximauthd.decision")

# /readyz answers from a check at most this old: a flood of probes costs one ping a second.
_READY_TTL_S = 1.0


class Frontend(Protocol):
    """Another protocol served beside the socket (e.g. :mod:`eximauthd.service.dovecot`),
    deciding through :meth:`Service.decide`: started once the socket listens, stopped before
    the workers."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Service:
    """The running service: decisions through a bounded pool, served on socket and HTTP."""

    def __init__(self, config: Config, decider: Decider | None = None,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.decider = decider or Decider(config)
        self.metrics = metrics or Metrics()
        limits = config.service
        self.workers = limits.workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="eximauthd-worker")
        self._pending = 0
        self._timeout = limits.request_timeout_ms / 1000
        self._read_timeout = limits.read_timeout_ms / 1000
        self._connections: set[asyncio.Task[Any]] = set()
        self._stopping: asyncio.Event | None = None
        self.metrics.workers.set(self.workers)
        # Throttle, cache, rate limiter and failure floor, with their loops: the decider's.
        self.defenses = self.decider.defenses
        self._ready: Decision | None = None
        self._ready_at = 0.0
        self._ready_check: asyncio.Future[Decision] | None = None
        nodes = self.decider.db.nodes
        if nodes is not None:
            self.metrics.db_node.set_function(lambda: nodes.index if nodes.usable else -1)
            self.metrics.db_node_changes.set_function(lambda: nodes.changes)

    # --- decisions -----------------------------------------------------------------------

    async def decide(self, request: Request, transport: str = "socket") -> Decision:
        """Answer *request*, logging one line; never raises."""
        started = time.perf_counter()
        verb = _verb(request)
        try:
            decision = await self._decide(request)
        except Exception:
            _log.exception("internal error while deciding %s", verb)
            decision = Decision.defer(Reason.INTERNAL_ERROR)
        await self.defenses.delay_failure(request, decision)
        elapsed = time.perf_counter() - started
        self._account(request, verb, decision, transport, elapsed)
        return decision

    async def _decide(self, request: Request) -> Decision:
        match request:
            case AuthRequest():
                # Read once, here: every layer after this takes the typed credentials.
                # Credentials refused unread need no worker, no database, no padding.
                credentials = self.defenses.credentials(request)
                if isinstance(credentials, Decision):
                    return credentials
                cached = self.defenses.cached_auth(credentials)
                if cached is not None:
                    return cached
                checked_at = time.monotonic()
                answer = await self._in_pool(lambda: self.decider.auth(credentials))
                return await self.defenses.padded(answer, time.monotonic() - checked_at)
            case ForgetRequest():
                return self.decider.forget(request.address)
            case RelayRequest():
                relay = read_relay(request.authenticated_id, request.sender, request.recipient,
                                   request.transaction)
                if isinstance(relay, Decision):
                    return relay
                # Most RELAYs (own address or domain) need no database: answer them here
                # rather than paying a thread hand-off and a deadline for a pure function.
                decision = self.decider.relay_without_storage(relay)
                if decision is None:
                    decision = await self._in_pool(lambda: self.decider.relay_with_grants(relay))
                if decision.result is Result.YES:
                    over = await self.defenses.over_rate(relay)
                    if over is not None:
                        return over
                return decision
            case PingRequest():
                return await self._in_pool(self.decider.ping)

    async def _in_pool(self, call: Callable[[], Decision]) -> Decision:
        if self._pending >= self.config.service.max_pending:
            self.metrics.overloaded.inc()
            return Decision.defer(Reason.OVERLOADED)
        self._pending += 1
        self.metrics.pending.set(self._pending)
        future = asyncio.get_running_loop().run_in_executor(self._pool, call)
        # The slot is held until the worker really finishes, even after a timeout, so the
        # bound counts work actually queued or running.
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            self.metrics.timeouts.inc()
            return Decision.defer(Reason.TIMEOUT)

    def _release(self, _future: asyncio.Future[Decision]) -> None:
        self._pending -= 1
        self.metrics.pending.set(self._pending)

    def _account(self, request: Request, verb: str, decision: Decision, transport: str,
                 elapsed: float) -> None:
        self.metrics.requests.labels(verb, transport, decision.result.value).inc()
        self.metrics.latency.labels(verb).observe(elapsed)
        match decision.reason:
            case Reason.DATABASE_UNAVAILABLE:
                self.metrics.db_errors.inc()
            case Reason.THROTTLED_IP:
                self.metrics.throttled.labels("ip").inc()
            case Reason.THROTTLED_USER:
                self.metrics.throttled.labels("user").inc()
            case Reason.RATE_LIMIT:
                self.metrics.rate_limited.labels(decision.detail).inc()
            case Reason.OK_CACHED:
                self.metrics.cache_hits.inc()
        fields: dict[str, Any] = {"verb": verb}
        match request:
            case AuthRequest():
                fields |= {"user": request.username, "mech": request.mechanism,
                           "client": request.client_ip}
            case RelayRequest():
                fields |= {"user": request.authenticated_id, "sender": request.sender,
                           "rcpt": request.recipient, "client": request.client_ip}
                if request.transaction:
                    fields["txn"] = request.transaction
            case ForgetRequest():
                fields["user"] = request.address
        fields |= {"result": decision.result.value, "reason": decision.text,
                   "ms": round(elapsed * 1000, 1), "via": transport}
        _decisions.info("decision", extra=decision_fields(**fields))

    # --- the Unix socket -----------------------------------------------------------------

    async def handle_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        """One request line in, one answer line out, close."""
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            reply = await self._answer(reader)
            writer.write(reply)
            # asyncio.timeout, not wait_for: no extra task per connection on the hot path.
            async with asyncio.timeout(self._read_timeout):
                await writer.drain()
        except Exception as exc:
            _log.debug("connection ended early: %s", type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            async with asyncio.timeout(self._read_timeout):
                data = await _read_request(reader)
        except TimeoutError:
            data = b""
            error: ProtocolError | None = ProtocolError(Reason.READ_TIMEOUT)
        else:
            error = None
        if error is None:
            try:
                request = parse_request(data)
            except ProtocolError as exc:
                error = exc
        if error is not None:
            self.metrics.protocol_errors.labels(error.reason).inc()
            _decisions.warning("bad request", extra=decision_fields(
                verb="BAD", result="defer", reason=error.reason, bytes=len(data), via="socket"))
            return format_reply(Decision.defer(Reason(error.reason)))
        return format_reply(await self.decide(request))

    # --- running -------------------------------------------------------------------------

    async def run(self, ready: Callable[[], None] | None = None,
                  on_hangup: Callable[[], None] | None = None,
                  frontends: Sequence[Frontend] = ()) -> None:
        """Serve until SIGTERM/SIGINT, then finish in-flight requests and clean up.

        *ready* is called once every listener accepts (the socket, HTTP, *frontends*);
        *on_hangup* on every SIGHUP (the CLI reopens its log file there, for logrotate).
        """
        loop = asyncio.get_running_loop()
        # Before the socket is bound, and before anything is logged: a bad token file stops
        # the start with one error line and nothing to undo.
        token = self.http_token() if self.config.http.enabled else ""
        # Before anything can fail for want of descriptors (see httpguard).
        httpguard.install_loop_error_handler(loop, httpguard.Throttled())
        before, open_files = httpguard.raise_open_files_limit()
        _log.info("open files limit: %d%s", open_files,
                  f" (raised from {before})" if open_files != before else "")
        self._stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        if on_hangup is not None:
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
        sock_path = self.config.socket.path
        self.defenses.begin_serving()
        sock = bind_unix_socket(sock_path, int(self.config.socket.mode, 8),
                                 self.config.socket.group)
        unix_server = await asyncio.start_unix_server(self.handle_connection, sock=sock,
                                                      limit=MAX_REQUEST_BYTES * 2,
                                                      backlog=BACKLOG)
        http = await self._start_http(token, open_files) if self.config.http.enabled else None
        self.defenses.start(on_sync_error=self.metrics.sync_errors.inc)
        if self.decider.db.nodes is not None:
            self.decider.db.nodes.start()
        try:
            for frontend in frontends:
                await frontend.start()
            if ready is not None:
                ready()
            await self._stopping.wait()
            _log.info("stopping: finishing %d in-flight request(s)", len(self._connections))
        finally:
            unix_server.close()
            for frontend in frontends:
                await frontend.stop()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=self._timeout + 1)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock_path)
            if http is not None:
                server, task = http
                server.should_exit = True
                await task
            await self.defenses.stop()
            self._pool.shutdown(wait=True)
            self.decider.close()  # and the defenses' sync thread

    # --- readiness (/readyz) --------------------------------------------------------------

    async def readiness(self) -> Decision:
        """Whether the database answers, by a check at most a second old; never raises.

        For unauthenticated probes: one check in flight at a time, on the sync thread, so a
        flood of probes takes no decision worker (``max_pending``) and writes no decision
        line; a change between ready and unavailable is logged once.
        """
        if self._ready is not None and time.monotonic() - self._ready_at < _READY_TTL_S:
            return self._ready
        check = self._ready_check
        if check is None or check.done():
            check = asyncio.get_running_loop().run_in_executor(self.defenses.sync_thread,
                                                               self._ping)
            check.add_done_callback(self._readiness_checked)
            self._ready_check = check
        try:
            return await asyncio.wait_for(asyncio.shield(check), self._timeout)
        except TimeoutError:
            return Decision.defer(Reason.TIMEOUT)

    def database_node(self) -> dict[str, Any] | None:
        """With failover_urls: the node in use (URL masked) and whether any is usable."""
        nodes = self.decider.db.nodes
        if nodes is None:
            return None
        return {"index": nodes.index, "url": nodes.describe(), "usable": nodes.usable}

    def _ping(self) -> Decision:
        try:
            return self.decider.ping()
        except Exception:
            _log.exception("internal error in the readiness check")
            return Decision.defer(Reason.INTERNAL_ERROR)

    def _readiness_checked(self, check: asyncio.Future[Decision]) -> None:
        if check.cancelled():  # the pool shut down under it
            return
        decision = check.result()
        before = self._ready
        self._ready, self._ready_at = decision, time.monotonic()
        if decision.allowed and before is not None and not before.allowed:
            _log.info("readiness: ready again")
        elif not decision.allowed and (before is None or before.allowed):
            _log.warning("readiness: unavailable (%s)", decision.text)

    def http_token(self) -> str:
        """``http.token``, or the token in ``http.token_file`` (created if absent).

        :raises ConfigError: the file is unsafe or holds no usable token.
        """
        if self.config.http.token:
            return self.config.http.token
        loaded = secretfile.load_or_create(os.path.abspath(self.config.http.token_path))
        # The path, never the value: clients read the file.
        _log.info("HTTP API bearer token %s %s", "created in" if loaded.created else "read from",
                  loaded.path)
        return loaded.value

    async def _start_http(self, token: str,
                          open_files: int) -> tuple[Any, asyncio.Task[None]]:
        host, _, port = self.config.http.listen.rpartition(":")
        # HTTP may hold only part of the descriptors: the rest stay for Exim's socket.
        cap = httpguard.http_connection_cap(open_files)
        # Our answer gets as long as a decision may take, and a little more to be read.
        answer_within = max(httpguard.REQUEST_DEADLINE_S,
                            self.config.service.request_timeout_ms / 1000 + 2)
        refused = self.metrics.http_refused
        protocol = httpguard.guarded_h11(
            cap, httpguard.REQUEST_DEADLINE_S, httpguard.Throttled(),
            response_deadline=answer_within,
            budget=httpguard.TokenBucket(httpguard.HTTP_REQUEST_RATE,
                                         httpguard.HTTP_REQUEST_BURST),
            on_refused=lambda reason: refused.labels(reason).inc())
        server = _QuietServer(uvicorn.Config(
            create_app(self, token), host=host.strip("[]"), port=int(port), lifespan="off",
            access_log=False, log_config=None, log_level="warning", http=protocol,
            timeout_keep_alive=int(httpguard.REQUEST_DEADLINE_S),
            backlog=httpguard.HTTP_BACKLOG,
        ))
        _log.info("HTTP: at most %d connections, %gs to send each request, %gs to read its "
                  "answer, %d requests each, %g requests/s in all", cap,
                  httpguard.REQUEST_DEADLINE_S, answer_within,
                  httpguard.MAX_REQUESTS_PER_CONNECTION, httpguard.HTTP_REQUEST_RATE)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # raises the bind error
                raise ConfigError(f"http.listen: could not listen on {self.config.http.listen}")
            await asyncio.sleep(0.01)
        return server, task


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _verb(request: Request) -> str:
    match request:
        case AuthRequest():
            return "AUTH"
        case RelayRequest():
            return "RELAY"
        case PingRequest():
            return "PING"
        case ForgetRequest():
            return "FORGET"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """Read up to the first newline or EOF, at most one byte past the protocol's limit."""
    data = b""
    while b"\n" not in data and len(data) <= MAX_REQUEST_BYTES:
        chunk = await reader.read(MAX_REQUEST_BYTES + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return data
