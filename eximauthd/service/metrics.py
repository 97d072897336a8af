"""Prometheus metrics of one service instance (a registry of its own, so tests can run many)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

# /metrics is open and rendering every series is the most expensive thing HTTP does: a
# scraper needs no fresher numbers than this, a flood of requests gets one render a second.
RENDER_CACHE_S = 1.0

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Metrics:
    """Requests by verb/transport/result, latency, pool queue depth, database errors."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _rendered: tuple[float, bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("eximauthd_requests", "Decisions made.",
                                ["verb", "transport", "result"], registry=r)
        self.latency = Histogram("eximauthd_request_duration_seconds",
                                 "Time from request received to answer.", ["verb"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.protocol_errors = Counter("eximauthd_protocol_errors",
                                       "Malformed requests, by reason.", ["reason"], registry=r)
        self.pending = Gauge("eximauthd_pending_requests",
                             "Requests waiting for or holding a worker.", registry=r)
        self.workers = Gauge("eximauthd_workers", "Size of the worker pool.", registry=r)
        self.db_errors = Counter("eximauthd_db_errors",
                                 "Decisions deferred because the database failed.", registry=r)
        self.overloaded = Counter("eximauthd_overloaded",
                                  "Requests deferred at once because the pool was full.",
                                  registry=r)
        self.timeouts = Counter("eximauthd_timeouts",
                                "Requests deferred because the deadline passed.", registry=r)

        self.throttled = Counter("eximauthd_throttled",
                                 "AUTHs refused without a password check, by scope (ip, user).",
                                 ["scope"], registry=r)
        self.rate_limited = Counter("eximauthd_rate_limited",
                                    "RELAYs deferred by an outbound limit, by kind and window.",
                                    ["limit"], registry=r)
        self.cache_hits = Counter("eximauthd_auth_cache_hits",
                                  "AUTHs answered from the positive cache.", registry=r)
        self.sync_errors = Counter("eximauthd_ratelimit_sync_errors",
                                   "Failed synchronisations of the rate counters.", registry=r)
        self.db_node = Gauge("eximauthd_database_node",
                             "Database node in use with failover_urls: 0 is url, 1 the first "
                             "failover URL...; -1 while none is usable.", registry=r)
        self.db_node_changes = Gauge("eximauthd_database_node_changes",
                                     "Times the database node in use changed.", registry=r)
        self.http_refused = Counter("eximauthd_http_refused",
                                    "HTTP connections cut: over the connection cap, past a "
                                    "deadline, over the request budget.", ["reason"],
                                    registry=r)

    def render(self, now: float | None = None) -> bytes:
        """The text format, rendered at most once per :data:`RENDER_CACHE_S`."""
        now = time.monotonic() if now is None else now
        if self._rendered is not None and 0 <= now - self._rendered[0] < RENDER_CACHE_S:
            return self._rendered[1]
        text = generate_latest(self.registry)
        self._rendered = (now, text)
        return text
