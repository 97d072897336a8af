"""Several database nodes in order of preference: use the first usable one, move on when it fails.

``[database] url`` comes first, then ``failover_urls`` in their order (docs/scaling.md).  A node
is usable when it answers, is not read-only and, on Galera, is ready (``wsrep_ready=ON``) and
``Synced``.  When the node in use fails (a connection error, a lost connection, a refusal that
means "not ready" or "read-only") the request that saw it fails (its caller answers ``defer``),
and the next requests go to the first usable node; a monitor thread checks the nodes every
``check_seconds`` and returns to the most preferred usable one.  While no node is usable every
request fails: nothing is decided on a node that could not do its part.

Galera sessions also get ``wsrep_sync_wait=1``: a read waits until the node has applied every
write the cluster committed before it (a password change, a disable, a grant, another
instance's counts made on another node), so no node answers from a state older than the
cluster's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pymysql
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..settings import mask_url

__all__ = ["NODE_FAILURES", "NodeSet", "galera_session", "is_node_failure", "node_health"]

_log = logging.getLogger("eximauthd.database")

NODE_FAILURES = frozenset({
    1047,  # WSREP has not yet prepared node for application use (not in the primary component)
    1053,  # server shutdown in progress
    1290,  # --read-only
    1836,  # read-only mode
    1927,  # connection killed
    2003,  # cannot connect
    2006,  # server has gone away
    2013,  # lost connection during query
    2055,  # lost connection (system error)
    4031,  # disconnected by the server (idle timeout)
})
"""MySQL/MariaDB error codes that say the node, not the request, is at fault."""


def is_node_failure(exc: BaseException) -> bool:
    """Whether *exc* (a SQLAlchemy error) means the node is gone, not ready or read-only."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in NODE_FAILURES


def galera_session(dbapi_connection: Any, _record: Any) -> None:
    """Pool ``connect`` hook: on a Galera node, reads wait for the cluster's last commit."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT @@wsrep_on")
        row = cursor.fetchone()
        if row and int(row[0] or 0):
            cursor.execute("SET SESSION wsrep_sync_wait = 1")
    except pymysql.MySQLError:
        return  # MySQL has no wsrep variables: nothing to set
    finally:
        cursor.close()


def node_health(engine: Engine) -> str:
    """Empty when the node behind *engine* is usable, else why not (log-safe)."""
    try:
        with engine.connect() as conn:
            read_only = conn.execute(sa.text("SELECT @@read_only")).scalar()
            # MySQL has no wsrep_on; MariaDB without Galera has it OFF (and wsrep_ready OFF).
            galera = conn.execute(sa.text("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")).first()
            status: dict[str, str] = {}
            if galera is not None and str(galera[1]).upper() == "ON":
                status = dict(conn.execute(sa.text(
                    "SHOW GLOBAL STATUS WHERE Variable_name IN "
                    "('wsrep_ready', 'wsrep_local_state_comment', 'wsrep_cluster_status')")).all())
    except SQLAlchemyError as exc:
        orig = exc.orig if isinstance(exc, DBAPIError) else None
        args: tuple[Any, ...] = getattr(orig, "args", ())
        code = f" {args[0]}" if args and isinstance(args[0], int) else ""
        return f"unreachable ({type(orig or exc).__name__}{code})"
    if read_only and int(read_only):
        return "read-only"
    if status.get("wsrep_ready", "ON") != "ON":
        return "wsrep_ready=OFF"
    if status.get("wsrep_cluster_status", "Primary") != "Primary":
        return f"not in the primary component ({status['wsrep_cluster_status']})"
    if status.get("wsrep_local_state_comment", "Synced") != "Synced":
        return f"not Synced ({status['wsrep_local_state_comment']})"
    return ""


class NodeSet:
    """The engines of every node and the one in use; thread-safe."""

    def __init__(self, urls: Sequence[str], make_engine: Callable[[str], Engine],
                 *, check_seconds: float = 2.0,
                 health: Callable[[Engine], str] = node_health) -> None:
        self.urls = tuple(urls)
        self.engines = [make_engine(url) for url in self.urls]
        self.check_seconds = check_seconds
        self._health = health
        self._lock = threading.Lock()
        self._index = 0
        self._usable = True
        self._changes = 0
        self._checked = False
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"NodeSet({[mask_url(u) for u in self.urls]!r}, current={self._index})"

    @property
    def current(self) -> Engine:
        """The engine of the node in use; the first call checks the nodes (a command run
        while ``url`` is down then goes to the next usable node at once)."""
        if not self._checked:
            self.choose(reason="first use")
        return self.engines[self._index]

    @property
    def index(self) -> int:
        """The node in use: 0 is ``url``, 1 the first of ``failover_urls``..."""
        return self._index

    @property
    def usable(self) -> bool:
        """False while no node was found usable (every request then fails)."""
        return self._usable

    @property
    def changes(self) -> int:
        """How many times the node in use changed (or became unusable)."""
        return self._changes

    def describe(self) -> str:
        """The node in use, password masked (for /readyz)."""
        return mask_url(self.urls[self._index])

    def start(self) -> None:
        """Start the monitor thread (the service; the CLI's one-shot commands need none)."""
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name="eximauthd-nodes",
                                             daemon=True)
            self._monitor.start()

    def failed(self, engine: Engine, exc: SQLAlchemyError) -> None:
        """A request on *engine* raised *exc*: if it means the node failed, choose again."""
        if engine is self.current and is_node_failure(exc):
            # Drop the pooled connections to the failed node: each would fail a request.
            engine.dispose()
            self.choose(reason="request failed")

    def choose(self, reason: str = "") -> None:
        """Move to the most preferred usable node (checking them in order).

        The checks run outside the lock: a node that does not answer costs its connect
        timeout, and requests must not queue behind it.
        """
        self._checked = True
        found, old = None, self._index
        for index, engine in enumerate(self.engines):
            why = self._health(engine)
            if not why:
                found = index
                break
            if index == old:
                reason = why  # what is wrong with the node we leave
        with self._lock:
            if found is not None:
                self._switch(found, True, reason)
            else:
                self._switch(self._index, False, reason)

    def _switch(self, index: int, usable: bool, reason: str) -> None:
        if index == self._index and usable == self._usable:
            return
        old = self._index
        self._index, self._usable = index, usable
        self._changes += 1
        if usable:
            # The one line per change an operator needs: which node, and why it changed.
            _log.warning("database node %d in use: %s (node %d: %s)", index,
                         mask_url(self.urls[index]), old, reason or "preferred node usable")
        else:
            _log.error("no database node usable (node %d: %s); every request is deferred "
                       "until one is", old, reason or "failed")

    def _watch(self) -> None:
        while not self._stop.wait(self.check_seconds):
            try:
                if self._index != 0 or not self._usable:
                    self.choose()
                elif why := self._health(self.current):
                    self.current.dispose()
                    self.choose(reason=why)
            except Exception:  # the monitor must outlive any surprise
                _log.exception("internal error checking the database nodes")

    def dispose(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=10)
            self._monitor = None
        for engine in self.engines:
            engine.dispose()
