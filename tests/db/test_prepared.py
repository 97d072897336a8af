"""Statements compiled once (eximauthd.db.prepared): the same answers as Core's execute, on
SQLite and MariaDB, with every value bound by the driver and the types' bind processing kept."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from eximauthd.db import tables
from eximauthd.db.engine import Database, exactly
from eximauthd.db.prepared import Lookup, Prepared

T0 = dt.datetime(2026, 11, 30, 12, 0, 0)

HOSTILE = ["plain", "o'brien", "x'); DROP TABLE eximauthd_auth_attempts; --", "back\\slash",
           "%(tag)s", "?", "nul\x00byte"]


def _attempts(db: Database, rows: list[dict[str, object]]) -> None:
    with db.write("test rows") as conn:
        conn.execute(sa.insert(tables.auth_attempts), rows)


def _row(subject: str, tag: str = "t", at: dt.datetime = T0) -> dict[str, object]:
    return {"scope": "user", "subject": subject, "tag": tag, "nonce": "n", "attempted_at": at}


@pytest.mark.parametrize("value", HOSTILE)
def test_values_are_bound_as_data_never_as_sql(database: Database, value: str) -> None:
    """Quotes, placeholders and comment markers in a value find exactly that row and run
    nothing: the table is still there and holds what it held."""
    t = tables.auth_attempts
    _attempts(database, [_row(value), _row("other")])
    find = Prepared(sa.select(t.c.subject).where(t.c.subject == sa.bindparam("who")))
    with database.auto_primary.connect() as conn:
        assert [r[0] for r in find.execute(conn, {"who": value})] == [value]
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() == 2


def test_datetimes_compare_as_core_stores_them(database: Database) -> None:
    """SQLite keeps DATETIME as text: a bound datetime must be rendered as SQLAlchemy renders
    the stored ones, or a range compares wrongly (the throttle's window)."""
    t = tables.auth_attempts
    _attempts(database, [_row("early", at=T0), _row("late", at=T0 + dt.timedelta(seconds=1))])
    since = Prepared(sa.select(t.c.subject).where(t.c.attempted_at >= sa.bindparam("since"))
                     .order_by(t.c.subject))
    with database.auto_primary.connect() as conn:
        assert [r[0] for r in since.execute(conn, {"since": T0})] == ["early", "late"]
        assert [r[0] for r in since.execute(
            conn, {"since": T0 + dt.timedelta(seconds=1)})] == ["late"]


def test_a_byte_exact_comparison_keeps_its_type(database: Database) -> None:
    """exactly() sends its value as UTF-8 bytes: a look-alike that the collation calls equal
    is not matched through a Prepared statement either."""
    t = tables.auth_attempts
    _attempts(database, [_row("boss@muller.test")])
    exact = Prepared(sa.select(t.c.subject).where(
        exactly(t.c.subject, sa.bindparam("who"), database.dialect)))
    with database.auto_primary.connect() as conn:
        assert [r[0] for r in exact.execute(conn, {"who": "boss@muller.test"})] == \
            ["boss@muller.test"]
        assert exact.execute(conn, {"who": "BOSS@muller.test"}).all() == []
        assert exact.execute(conn, {"who": "boss@müller.test"}).all() == []


def test_fixed_values_and_repeated_names_are_sent(database: Database) -> None:
    """A LIMIT and literals are compiled into parameters with their values; a name used twice
    is one value (positional SQLite gets it in every place)."""
    t = tables.auth_attempts
    _attempts(database, [_row(f"u{i}", tag="a" if i % 2 else "b") for i in range(6)])
    query = Prepared(sa.select(t.c.subject, sa.literal(7).label("seven"))
                     .where(sa.or_(t.c.tag == sa.bindparam("tag"),
                                   t.c.subject == sa.bindparam("tag")))
                     .order_by(t.c.subject).limit(2))
    with database.auto_primary.connect() as conn:
        assert query.execute(conn, {"tag": "a"}).all() == [("u1", 7), ("u3", 7)]
        assert query.execute(conn, {"tag": "u0"}).all() == [("u0", 7)]


def test_a_missing_or_unknown_value_is_an_error_not_a_null(database: Database) -> None:
    t = tables.auth_attempts
    query = Prepared(sa.select(t.c.subject).where(t.c.subject == sa.bindparam("who")))
    with database.auto_primary.connect() as conn:
        with pytest.raises(TypeError, match=r"missing \['who'\]"):
            query.execute(conn, {})
        with pytest.raises(TypeError, match=r"unknown \['whom'\]"):
            query.execute(conn, {"who": "x", "whom": "y"})


def test_an_expanding_parameter_is_refused(database: Database) -> None:
    """An IN list is completed per call by Core: a text compiled once cannot carry one."""
    t = tables.auth_attempts
    query = Prepared(sa.select(t.c.subject).where(
        t.c.subject.in_(sa.bindparam("who", expanding=True))))
    with database.auto_primary.connect() as conn, pytest.raises(ValueError, match="named"):
        query.execute(conn, {"who": ["x"]})


def test_a_lookup_bound_for_a_key_is_the_prepared_query_with_its_values(
        database: Database) -> None:
    t = tables.auth_attempts
    _attempts(database, [_row("alice@example.test"), _row("bob@example.test")])
    lookup = Lookup(sa.select(t.c.subject).where(t.c.subject == sa.bindparam("login0")),
                    lambda key: {"login0": f"{key}@example.test"})
    with database.auto_primary.connect() as conn:
        assert conn.execute(lookup.bound("bob")).all() == [("bob@example.test",)]
        assert Prepared(lookup.statement).execute(conn, lookup.values("alice")).all() == \
            [("alice@example.test",)]
