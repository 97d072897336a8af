"""Statements of the request path, compiled once and sent with the driver's bound parameters.

SQLAlchemy's ``Connection.execute`` walks a statement for its cache key on every call, and a
statement built per request is built again as well.  On the AUTH path that cost more CPU than the
round trip to the server: about 0.4 ms a statement on the bench machine, against 0.07 ms for
the same statement sent with ``exec_driver_sql`` (bench/RESULTS.md, "SQL statements compiled
once").  A :class:`Prepared` statement is a Core expression compiled once per dialect; each call
only binds values.  Nothing changes for the server: it receives the SQL text SQLAlchemy renders
and the values the driver escapes, exactly as ``execute`` sends them, never values pasted into
the text.  The types' own bind processing (SQLite's DATETIME text, the byte-exact comparison's
UTF-8) is applied; rows come back as the driver reads them, without result processing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult, Dialect
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["Lookup", "Prepared"]


class Prepared:
    """One statement whose every parameter is a named :func:`sqlalchemy.bindparam` or a fixed
    value.  Thread-safe: compiling twice at once only compiles the same text twice."""

    def __init__(self, statement: sa.ClauseElement) -> None:
        self.statement = statement
        # Per dialect object: every engine has its own, initialised from its server.
        self._compiled: dict[int, _Compiled] = {}

    def __repr__(self) -> str:
        return f"Prepared({type(self.statement).__name__})"

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> CursorResult[Any]:
        """Send the statement on *conn* with *values* for its named parameters.

        :raises TypeError: a named parameter has no value, or a value names none (a bug).
        """
        dialect = conn.dialect
        compiled = self._compiled.get(id(dialect))
        if compiled is None:
            compiled = self._compiled[id(dialect)] = _Compiled(self.statement, dialect)
        return conn.exec_driver_sql(compiled.sql, compiled.parameters(values))


class _Compiled:
    def __init__(self, statement: sa.ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)  # every Core statement compiles to one
        sql = str(compiled)
        # Expanding IN lists and literal-rendered values are completed per call by
        # SQLAlchemy's execute; a text compiled once cannot hold them.
        if "__[POSTCOMPILE" in sql or compiled.escaped_bind_names:
            raise ValueError("a Prepared statement takes plain named parameters only")
        self.sql = sql
        self._processors: dict[str, Callable[[Any], Any]] = {}
        self._fixed: dict[str, Any] = {}
        required: set[str] = set()
        for bind, name in compiled.bind_names.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor
            if bind.required:
                required.add(name)
            else:
                value = bind.effective_value
                self._fixed[name] = value if processor is None else processor(value)
        self._required = frozenset(required)
        positions = compiled.positiontup
        self._order: tuple[str, ...] | None = tuple(positions) if positions else None

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any] | tuple[Any, ...]:
        if values.keys() != self._required:
            missing = sorted(self._required - values.keys())
            unknown = sorted(values.keys() - self._required)
            raise TypeError(f"prepared statement: missing {missing}, unknown {unknown}")
        params = dict(self._fixed)
        processors = self._processors
        for name, value in values.items():
            process = processors.get(name)
            params[name] = value if process is None else process(value)
        if self._order is None:
            return params
        return tuple(params[name] for name in self._order)


@dataclass(frozen=True, slots=True)
class Lookup:
    """A query built once with named parameters, and how one key gives their values.

    The account stores describe their login lookup this way, so that the throttle can send it
    inside its counting statement and :class:`Prepared` can compile that statement once.
    """

    statement: sa.Select[Any]
    values: Callable[[Any], dict[str, Any]]

    def bound(self, key: Any) -> sa.Select[Any]:
        """The statement with *key*'s values in it (for EXPLAIN and other one-off uses)."""
        return self.statement.params(self.values(key))
