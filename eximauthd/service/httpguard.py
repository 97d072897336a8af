"""Bounds on what HTTP clients can hold: descriptors, connections, time; and on what they log.

The Unix socket (Exim) and the HTTP API share one process and so one budget of file
descriptors.  uvicorn neither caps its connections (``limit_concurrency`` only answers 503 to
requests already parsed; an idle or half-sent connection is never counted against it) nor
times out a request whose header never ends.  Left alone, a thousand idle TCP connections use
every descriptor, and Exim's connections to the socket are no longer accepted: all
authenticated mail defers.  So:

* the soft ``RLIMIT_NOFILE`` is raised to the hard one at start (:func:`raise_open_files_limit`);
* HTTP holds at most :func:`http_connection_cap` connections, at most a quarter of the limit;
  a connection over the cap is closed as soon as it is accepted (:func:`guarded_h11`), and
  the listen backlog (:data:`HTTP_BACKLOG`) bounds how many are accepted at once, so about
  half of the descriptors always remain for the socket, the database and the log;
* a client has :data:`REQUEST_DEADLINE_S` seconds, from connecting or from the end of the
  previous response, to send a whole request (header and body), or it is disconnected;
* our side has a deadline too: once a request is complete, its response must be written (the
  client must read it) within the response deadline, or the connection is aborted, whatever
  state h11 is in; a client that pipelines requests and never reads cannot hold a slot;
* a connection serves at most :data:`MAX_REQUESTS_PER_CONNECTION` requests (the last answer
  says ``Connection: close``), and all of HTTP at most :data:`HTTP_REQUEST_RATE` requests a
  second (a :class:`TokenBucket` of :data:`HTTP_REQUEST_BURST`): a request over the budget
  closes its connection without running the app.  HTTP shares the event loop with Exim's
  socket, and every request is parsed and answered on it: this bounds the CPU HTTP can take;
* asyncio's own error reports (``socket.accept() out of system resource`` comes once per
  pending connection, per retry) are logged at most once a minute each, with a count of the
  rest (:func:`install_loop_error_handler`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "HTTP_BACKLOG",
    "HTTP_REQUEST_BURST",
    "HTTP_REQUEST_RATE",
    "MAX_HTTP_CONNECTIONS",
    "MAX_REQUESTS_PER_CONNECTION",
    "REQUEST_DEADLINE_S",
    "Throttled",
    "TokenBucket",
    "guarded_h11",
    "http_connection_cap",
    "install_loop_error_handler",
    "raise_open_files_limit",
]

_log = logging.getLogger("eximauthd.service")

# The HTTP API is local and light (probes, metrics, a few API clients): this many concurrent
# connections is plenty, and small next to any sane descriptor limit.
MAX_HTTP_CONNECTIONS = 256
# asyncio accepts up to the listen backlog in one go, before any connection reaches the
# cap's check: a small backlog keeps that burst small (uvicorn's default is 2048).  Clients
# beyond it wait in the kernel, costing no descriptor here.
HTTP_BACKLOG = 64
# As uvicorn's keep-alive timeout: a local client that needs longer to send a few hundred
# bytes is not a client.
REQUEST_DEADLINE_S = 5.0
# Probes and metrics scrapes make a few requests a second; this leaves the loop mostly to
# Exim's socket even when all of it is spent on /metrics (measured: docs/service.md).
HTTP_REQUEST_RATE = 200.0
HTTP_REQUEST_BURST = 400.0
# Keep-alive is for a scraper's or probe's few requests; a pipeline of hundreds is an attack.
MAX_REQUESTS_PER_CONNECTION = 100
# h11's own default for a request header's size (uvicorn's too).
_H11_MAX_EVENT = 16 * 1024
# Beyond this the limit is effectively "unlimited"; a soft limit of RLIM_INFINITY would be
# refused by the kernel anyway (fs.nr_open).
_NOFILE_CEILING = 1 << 20


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return ``(before, now)``.

    Never fails: when the kernel refuses, the limit stays what it was (and is reported).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NOFILE_CEILING if hard == resource.RLIM_INFINITY else min(hard, _NOFILE_CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            _log.warning("open files limit: cannot raise %d to %d: %s", soft, target, exc)
            return soft, soft
        return soft, target
    return soft, soft


def http_connection_cap(open_files: int) -> int:
    """Concurrent HTTP connections allowed under a limit of *open_files* descriptors.  Pure."""
    return max(8, min(MAX_HTTP_CONNECTIONS, open_files // 4))


class Throttled:
    """Lets a kind of log line through at most once per *interval* seconds; counts the rest."""

    _MAX_KINDS = 64  # kinds come from asyncio's messages: bound them all the same

    def __init__(self, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}

    def admit(self, kind: str) -> int | None:
        """``None``: hold this line back.  Else the number held back since the last one."""
        now = self._clock()
        last = self._seen.get(kind)
        if last is not None and now - last[0] < self.interval:
            self._seen[kind] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._seen) >= self._MAX_KINDS:
            self._seen.clear()
        self._seen[kind] = (now, 0)
        return 0 if last is None else last[1]

    def suffix(self, held: int) -> str:
        return f" ({held} more in the last {self.interval:.0f}s not logged)" if held else ""


class TokenBucket:
    """*rate* tokens a second, at most *burst* saved up; :meth:`take` spends one.  No I/O."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self) -> bool:
        """Spend a token: ``False`` (and nothing spent) when there is none."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def install_loop_error_handler(loop: asyncio.AbstractEventLoop, throttle: Throttled) -> None:
    """Route *loop*'s error reports through *throttle*: one line per kind per interval."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled error in the event loop")
        exc = context.get("exception")
        # "Exception in callback <handle repr>" differs every time: the kind is its start.
        kind = f"{type(exc).__name__}:{message[:48]}"
        held = throttle.admit(kind)
        if held is None:
            return
        if isinstance(exc, OSError):
            # accept() out of descriptors or buffers: one line, no traceback per connection.
            _log.error("%s: %s%s", message, exc.strerror or exc, throttle.suffix(held))
            return
        loop.default_exception_handler(context)
        if held:
            _log.error("%d more event loop errors like the above not logged", held)

    loop.set_exception_handler(handler)


def guarded_h11(max_connections: int, deadline: float, throttle: Throttled, *,
                response_deadline: float | None = None,
                max_requests: int = MAX_REQUESTS_PER_CONNECTION,
                budget: TokenBucket | None = None,
                on_refused: Callable[[str], None] | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol, holding at most *max_connections*, none past its deadlines.

    *deadline*: to send each request; *response_deadline*: for its answer to be written.  At
    most *max_requests* per connection, and each request spends a token of *budget*.
    *on_refused* is told why a connection was cut: ``connections``, ``deadline``, ``budget``.
    """
    # Imported here, not at the top: `serve` uses the rest of this module with HTTP off too,
    # and h11 with uvicorn (which loads multiprocessing) would stay in its memory unused.
    import h11  # noqa: PLC0415
    from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: PLC0415

    class _GatedConnection(h11.Connection):
        """h11's server side, handing each complete request to :attr:`on_request` first.

        ``None`` from it drops the request (the connection is being cut): uvicorn sees no event.
        """

        on_request: Callable[[h11.Request], h11.Request | None] | None = None

        def next_event(self) -> Any:
            event = super().next_event()
            if isinstance(event, h11.Request) and self.on_request is not None:
                admitted = self.on_request(event)
                return h11.NEED_DATA if admitted is None else admitted
            return event

    answer_within = deadline if response_deadline is None else response_deadline
    bucket = budget if budget is not None else TokenBucket(HTTP_REQUEST_RATE, HTTP_REQUEST_BURST)

    def refused(reason: str) -> None:
        if on_refused is not None:
            on_refused(reason)

    class GuardedH11Protocol(H11Protocol):
        _refused = False
        _lost = False
        _served = 0
        _timer: asyncio.TimerHandle | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            size = self.config.h11_max_incomplete_event_size
            gate = _GatedConnection(h11.SERVER, size if size is not None else _H11_MAX_EVENT)
            gate.on_request = self._admit
            self.conn = gate

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                # Accepted only to be closed: the descriptor is free again at once.
                self._refused = True
                transport.abort()
                refused("connections")
                held = throttle.admit("http-cap")
                if held is not None:
                    _log.warning("HTTP: %d connections open, closing new ones%s",
                                 max_connections, throttle.suffix(held))
                return
            super().connection_made(transport)
            self._arm(deadline)

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._lost = True
            self._disarm()
            if not self._refused:
                super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                # close() waits for the client to read what is buffered: not for ever.
                self._arm(answer_within)
            else:
                self._arm(deadline)  # the next request gets a deadline of its own

        def _admit(self, event: h11.Request) -> h11.Request | None:
            """A complete request: run it (perhaps as the last), or cut the connection."""
            if self._served >= max_requests or not bucket.take():
                self.transport.abort()  # connection_lost follows: uvicorn forgets it there
                refused("budget")
                held = throttle.admit("http-budget")
                if held is not None:
                    _log.warning("HTTP: over %g requests/s, closing connections without an "
                                 "answer%s", bucket.rate, throttle.suffix(held))
                return None
            self._served += 1
            self._arm(answer_within)  # from now on the client must read what it asked for
            if self._served < max_requests:
                return event
            # uvicorn answers "Connection: close" to a request that asked for it, then closes.
            return h11.Request(method=event.method, target=event.target,
                               headers=[*event.headers, (b"connection", b"close")],
                               http_version=event.http_version)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            if self._lost:
                return
            # IDLE: the header is not complete; SEND_BODY: nor is the body.  Otherwise the
            # answer is not written: the client does not read (or the app hangs).
            waiting = self.conn.their_state in {h11.IDLE, h11.SEND_BODY} \
                and self.conn.our_state is not h11.MUST_CLOSE
            held = throttle.admit("http-deadline")
            if held is not None:
                _log.warning("HTTP: closed a connection that %s%s",
                             f"sent no complete request in {deadline:g}s" if waiting else
                             f"did not read its answer in {answer_within:g}s",
                             throttle.suffix(held))
            refused("deadline")
            self.transport.abort()

    return GuardedH11Protocol

