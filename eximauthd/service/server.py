"""``eximauthd serve``: one asyncio process with the Unix socket for Exim and the HTTP API.

The event loop only moves bytes.  argon2 and database work run in a bounded thread pool
(argon2-cffi releases the GIL), each request under a deadline shorter than Exim's readsocket
timeout.  When the pool is saturated the answer is ``defer overloaded`` at once rather than a
queue without bound; when anything goes wrong the answer is ``defer``: never ``yes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

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
from .logs import log_decision
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
        self.workers = self.decider.checks
        # Twice as many threads as password checks may run at once (the decider's bound):
        # while one thread waits for MariaDB (an AUTH's reservation, a grant lookup), another
        # hashes on its core (bench/RESULTS.md: 81 -> 91 AUTH/s at m=19456, 2 cores, 8 clients).
        self._pool = ThreadPoolExecutor(2 * self.workers, thread_name_prefix="eximauthd-worker")
        self._pending = 0
        self._timeout = limits.request_timeout_ms / 1000
        self._read_timeout = limits.read_timeout_ms / 1000
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # prometheus_client children by label values, looked up once each.
        self._counted: dict[tuple[str, str, str], Any] = {}
        self._latency: dict[str, Any] = {}
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
        decision = self._decide_now(request)
        if decision is None or self.defenses.delays_failure(request, decision):
            decision = await self._decide_later(request, decision)
        return self._accounted(request, decision, transport, started)

    def decide_now(self, request: Request, transport: str) -> Decision | None:
        """:meth:`decide`'s answer, logged, when the event loop settles it with no worker and
        no wait (:meth:`_decide_now`); else None, and nothing is logged: call :meth:`decide`.
        Never raises."""
        started = time.perf_counter()
        decision = self._decide_now(request)
        if decision is None or self.defenses.delays_failure(request, decision):
            return None
        return self._accounted(request, decision, transport, started)

    def _accounted(self, request: Request, decision: Decision, transport: str,
                   started: float) -> Decision:
        """*decision*, counted and logged; a defer if that fails.

        A bug in the bookkeeping must not escape: a front end whose check raised would hold
        its client unanswered (Exim's dovecot driver waits without a timeout), and a decision
        without its log line is not given.
        """
        try:
            self._account(request, decision, transport, time.perf_counter() - started)
        except Exception:
            _log.exception("internal error while logging a %s decision", _VERBS[type(request)])
            return Decision.defer(Reason.INTERNAL_ERROR)
        return decision

    def _decide_now(self, request: Request) -> Decision | None:
        """The decision when it needs no worker and no wait, else None; never raises.

        Runs on the event loop: protocol-level refusals, the AUTH cache, FORGET and the RELAYs
        the pure policy settles (with their rate check, while the user's totals are known)
        cost no thread hand-off, no deadline timer and no task.
        """
        try:
            match request:
                case AuthRequest():
                    # Read once per path: every layer after this takes the typed credentials.
                    # Credentials refused unread need no worker, no database, no padding.
                    credentials = self.defenses.credentials(request)
                    if isinstance(credentials, Decision):
                        return credentials
                    return self.defenses.cached_auth(credentials)
                case RelayRequest():
                    relay = read_relay(request.authenticated_id, request.sender,
                                       request.recipient, request.transaction)
                    if isinstance(relay, Decision):
                        return relay
                    decision = self.decider.relay_without_storage(relay)
                    if decision is None or decision.result is not Result.YES:
                        return decision
                    if not self.defenses.knows_rate(relay):
                        return None  # the first RELAY of a user waits for its totals
                    return self.defenses.admit(relay) or decision
                case ForgetRequest():
                    return self.decider.forget(request.address)
                case PingRequest():
                    return None
        except Exception:
            _log.exception("internal error while deciding %s", _VERBS[type(request)])
            return Decision.defer(Reason.INTERNAL_ERROR)

    async def _decide_later(self, request: Request, decision: Decision | None) -> Decision:
        """The rest of :meth:`decide`: the worker pool and the waits; never raises."""
        if decision is None:
            try:
                decision = await self._decide(request)
            except Exception:
                _log.exception("internal error while deciding %s", _VERBS[type(request)])
                decision = Decision.defer(Reason.INTERNAL_ERROR)
        await self.defenses.delay_failure(request, decision)
        return decision

    async def _decide(self, request: Request) -> Decision:
        match request:
            case AuthRequest():
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
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._pool, call)
        # The slot is held until the worker really finishes, even after a timeout, so the
        # bound counts work actually queued or running.
        work.add_done_callback(self._release)
        # The deadline is one timer handle, not wait_for's task and shield.
        answer: asyncio.Future[Decision] = loop.create_future()
        timer = loop.call_later(self._timeout, self._expire, answer)
        work.add_done_callback(functools.partial(_settle, answer, timer))
        return await answer

    def _expire(self, answer: asyncio.Future[Decision]) -> None:
        if not answer.done():
            self.metrics.timeouts.inc()
            answer.set_result(Decision.defer(Reason.TIMEOUT))

    def _release(self, _future: asyncio.Future[Decision]) -> None:
        self._pending -= 1
        self.metrics.pending.set(self._pending)

    def _account(self, request: Request, decision: Decision, transport: str,
                 elapsed: float) -> None:
        verb = _VERBS[type(request)]
        result = decision.result.value
        counted = self._counted.get((verb, transport, result))
        if counted is None:  # prometheus_client's labels() is a lock and a lookup per call
            counted = self._counted[verb, transport, result] = self.metrics.requests.labels(
                verb, transport, result)
        counted.inc()
        latency = self._latency.get(verb)
        if latency is None:
            latency = self._latency[verb] = self.metrics.latency.labels(verb)
        latency.observe(elapsed)
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
        fields: dict[str, Any]
        match request:
            case AuthRequest():
                fields = {"verb": verb, "user": request.username, "mech": request.mechanism,
                          "client": request.client_ip}
            case RelayRequest():
                fields = {"verb": verb, "user": request.authenticated_id,
                          "sender": request.sender, "rcpt": request.recipient,
                          "client": request.client_ip}
                if request.transaction:
                    fields["txn"] = request.transaction
            case ForgetRequest():
                fields = {"verb": verb, "user": request.address}
            case _:
                fields = {"verb": verb}
        fields["result"] = result
        fields["reason"] = decision.text
        fields["ms"] = round(elapsed * 1000, 1)
        fields["via"] = transport
        log_decision(_decisions, logging.INFO, fields)

    # --- the Unix socket -----------------------------------------------------------------

    def _on_request(self, connection: _Connection, data: bytes, started: float) -> None:
        """Answer the request *connection* read: on the loop when possible, else by a task."""
        try:
            request = parse_request(data)
        except ProtocolError as exc:
            connection.answer(self._refuse(exc.reason, len(data)))
            return
        decision = self._decide_now(request)
        if decision is not None and not self.defenses.delays_failure(request, decision):
            connection.answer(format_reply(self._accounted(request, decision, "socket",
                                                           started)))
            return
        connection.wait()
        task = asyncio.get_running_loop().create_task(
            self._answer_later(connection, request, decision, started))
        # The loop keeps only a weak reference to a task: this set keeps it, and lets
        # shutdown wait for it even after its client has gone.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_later(self, connection: _Connection, request: Request,
                            decision: Decision | None, started: float) -> None:
        decision = await self._decide_later(request, decision)
        connection.answer(format_reply(self._accounted(request, decision, "socket", started)))

    def _refuse(self, reason: str, size: int) -> bytes:
        """The answer to a request that cannot be read, counted and logged."""
        self.metrics.protocol_errors.labels(reason).inc()
        log_decision(_decisions, logging.WARNING, {
            "verb": "BAD", "result": "defer", "reason": reason, "bytes": size, "via": "socket"})
        return format_reply(Decision.defer(Reason(reason)))

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
        unix_server = await loop.create_unix_server(lambda: _Connection(self), sock=sock,
                                                    backlog=BACKLOG)
        try:
            http = (await self._start_http(token, open_files) if self.config.http.enabled
                    else None)
        except BaseException:
            # Not serving after all: leave no socket behind for Exim to defer on.
            unix_server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock_path)
            raise
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
            # Connections still reading or answering, and decisions whose client has gone.
            give_up = loop.time() + self._timeout + 1
            while (self._connections or self._tasks) and loop.time() < give_up:
                await asyncio.sleep(0.01)
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
        # Falcon and uvicorn only with HTTP on: otherwise they would hold ~5 MiB for nothing.
        import uvicorn  # noqa: PLC0415

        from .http import QuietServer, create_app  # noqa: PLC0415

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
        server = QuietServer(uvicorn.Config(
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
                # uvicorn logs the bind error and calls sys.exit(1): make that the one line.
                with contextlib.suppress(OSError, SystemExit):
                    task.result()
                raise ConfigError(f"http.listen: could not listen on {self.config.http.listen} "
                                  "(in use by another process? stop it, or change http.listen)")
            await asyncio.sleep(0.01)
        return server, task


_VERBS: dict[type[Request], str] = {AuthRequest: "AUTH", RelayRequest: "RELAY",
                                    PingRequest: "PING", ForgetRequest: "FORGET"}


def _settle(answer: asyncio.Future[Decision], timer: asyncio.TimerHandle,
            work: asyncio.Future[Decision]) -> None:
    """Hand the worker's result to *answer*, unless the deadline answered first."""
    timer.cancel()
    if work.cancelled():
        if not answer.done():
            answer.cancel()
        return
    error = work.exception()  # retrieved even when late: asyncio would log it otherwise
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(work.result())


class _Connection(asyncio.Protocol):
    """One ``${readsocket}`` exchange: a request line in, one answer line out, close.

    A protocol, not streams: reading, the read deadline (one timer handle) and the answer
    are callbacks on the loop, with no task unless the decision needs the worker pool.
    """

    __slots__ = ("_data", "_reading", "_service", "_timer", "_transport")

    def __init__(self, service: Service) -> None:
        self._service = service
        self._transport: asyncio.Transport | None = None
        self._data = b""
        self._timer: asyncio.TimerHandle | None = None
        self._reading = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        service = self._service
        service._connections.add(self)
        self._timer = asyncio.get_running_loop().call_later(service._read_timeout,
                                                            self._read_timed_out)

    def data_received(self, data: bytes) -> None:
        if not self._reading:
            return
        # Up to the first newline or EOF, at most one byte past the protocol's limit: what
        # arrived with the newline stays (parse_request says several-lines).
        if self._data:
            data = self._data + data
        if b"\n" in data or len(data) > MAX_REQUEST_BYTES:
            self._request(data[:MAX_REQUEST_BYTES + 1])
        else:
            self._data = data

    def eof_received(self) -> bool:
        if self._reading:
            self._request(self._data)
        return True  # half-closed: the client still reads the answer

    def _request(self, data: bytes) -> None:
        self._reading = False
        self._data = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self._service._on_request(self, data, time.perf_counter())
        except Exception:
            # Not expected (parsing raises only ProtocolError, deciding nothing), but a bug
            # here must cost one defer, never the transport's "fatal error" path.
            _log.exception("internal error while answering a request")
            self.answer(format_reply(Decision.defer(Reason.INTERNAL_ERROR)))

    def wait(self) -> None:
        """Read nothing more while the answer is being decided (answered at once: no need)."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def _read_timed_out(self) -> None:
        self._timer = None
        if self._reading:
            self._reading = False
            self._data = b""
            self.answer(self._service._refuse(Reason.READ_TIMEOUT, 0))

    def answer(self, reply: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the client has gone: nobody to answer
        transport.write(reply)
        transport.close()  # after what is buffered is written
        if transport.get_write_buffer_size():
            # A client that does not read its answer is cut after the read timeout.
            self._timer = asyncio.get_running_loop().call_later(
                self._service._read_timeout, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reading = False
        self._service._connections.discard(self)
        if exc is not None:
            _log.debug("connection ended early: %s", type(exc).__name__)
