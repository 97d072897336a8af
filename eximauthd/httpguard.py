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
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "HTTP_BACKLOG",
    "MAX_HTTP_CONNECTIONS",
    "REQUEST_DEADLINE_S",
    "Throttled",
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


def guarded_h11(max_connections: int, deadline: float,
                throttle: Throttled) -> type[H11Protocol]:
    """uvicorn's h11 protocol, holding at most *max_connections* and none past *deadline*."""

    class GuardedH11Protocol(H11Protocol):
        _refused = False
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                # Accepted only to be closed: the descriptor is free again at once.
                self._refused = True
                transport.abort()
                held = throttle.admit("http-cap")
                if held is not None:
                    _log.warning("HTTP: %d connections open, closing new ones%s",
                                 max_connections, throttle.suffix(held))
                return
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if not self._refused:
                super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request gets a deadline of its own

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(deadline, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            # IDLE: the header is not complete; SEND_BODY: nor is the body.  Otherwise the
            # request is being answered, and its response re-arms the deadline.
            if self.conn.their_state in {h11.IDLE, h11.SEND_BODY}:
                held = throttle.admit("http-deadline")
                if held is not None:
                    _log.warning("HTTP: closed a connection that sent no complete request in "
                                 "%gs%s", deadline, throttle.suffix(held))
                self.transport.abort()

    return GuardedH11Protocol
