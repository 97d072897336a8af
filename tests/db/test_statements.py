"""How many SQL statements a decision costs, counted by the database server itself.

On MariaDB the count is the server's own ``Questions`` + ``Com_admin_commands`` (pings) of the
one pooled connection the request path uses (read before and after with ``SHOW SESSION
STATUS``, the reading itself subtracted), so a BEGIN, COMMIT, ROLLBACK or ping the driver sends
counts like any query.  SQLite has
no server: there the statements SQLAlchemy sends are counted.  Also here: a connection killed
under the pool is retried once, a database that is gone still defers, a read sees a password
changed on another connection, and a rehash the database refuses backs off.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from eximauthd.auth.authn import REHASH_BACKOFF_SECONDS, Authenticator
from eximauthd.core.addresses import parse_address
from eximauthd.core.decision import Decision, Reason, Result
from eximauthd.core.hashing import Hasher
from eximauthd.core.protocol import AuthRequest, RelayRequest
from eximauthd.db.accounts import LegacyAccountStore, OwnAccountStore
from eximauthd.db.counters import AttemptStore, utcnow
from eximauthd.db.engine import Database
from eximauthd.db.grants import Grant, GrantStore
from eximauthd.errors import StorageError
from eximauthd.service.decider import Decider
from eximauthd.settings import CacheConfig, DatabaseConfig, LegacyConfig, ThrottleConfig

from ..support import FAST_HASHING, config_for, credentials, decide_auth, decide_relay

ALICE = "alice@example.test"
PASSWORD = "right-password"
CLIENT = "192.0.2.10"


class Statements:
    """Counts the statements a block sends on *db*'s request-path pool."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.mariadb = db.is_mysql
        self._sent = 0
        self._transactional = 0  # sent on the pool of multi-statement transactions
        for engine in {db.auto_primary, db.auto_replica}:
            sa.event.listen(engine, "before_cursor_execute", self._count)
        for engine in {db.primary, db.replica}:
            sa.event.listen(engine, "before_cursor_execute", self._count_transactional)

    def _count(self, *_: Any) -> None:
        self._sent += 1

    def _count_transactional(self, *_: Any) -> None:
        self._sent += 1
        self._transactional += 1

    def _questions(self) -> tuple[int, int]:
        def read(conn: sa.Connection) -> tuple[int, int]:
            # COM_PING (a pool's pre-ping) is not a question but an admin command.
            rows = conn.exec_driver_sql("SHOW SESSION STATUS WHERE Variable_name IN "
                                        "('Questions', 'Com_admin_commands')").all()
            return (int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()),
                    sum(int(value) for _, value in rows))
        return self.db.run("count statements", read, primary=True)

    def of(self, block: Callable[[], object]) -> int:
        """The statements *block* sent (on MariaDB: as the server counted them)."""
        if not self.mariadb:
            before = self._sent
            block()
            return self._sent - before
        conn_id, before = self._questions()
        transactional = self._transactional
        block()
        after_id, after = self._questions()
        # One pooled connection served the block, or the count would miss statements.
        assert after_id == conn_id
        assert self.db.auto_primary.pool.checkedin() == 1  # type: ignore[attr-defined]
        # The SELECT CONNECTION_ID() and the SHOW that read `after` are not the block's; what
        # went to the other pool is counted as sent (at least: its COMMIT is not seen there).
        return after - before - 2 + self._transactional - transactional


def _decider(db: Database, *, throttle: bool, cache: bool = False) -> Decider:
    # Successes' reservations are taken back only when a test flushes them (an hour is past
    # any test), so that no timer thread sends a statement while one is counted.
    config = replace(config_for(db.config.url),
                     throttle=ThrottleConfig(enabled=throttle, trusted_network_seconds=0,
                                             release_delay_ms=3_600_000),
                     cache=CacheConfig(ttl_seconds=300 if cache else 0))
    return Decider(config, db)


@pytest.fixture
def alice(database: Database) -> Database:
    OwnAccountStore(database).add(parse_address(ALICE), Hasher(FAST_HASHING).hash(PASSWORD))
    GrantStore(database).add(Grant(ALICE, "@partner.test"))
    return database


def _auth(decider: Decider, password: str, user: str = ALICE) -> Decision:
    return decide_auth(decider, AuthRequest("PLAIN", user, password, CLIENT))


# (throttle on?, user, password) -> statements.  The throttle reserves before it checks: an
# INSERT, then one SELECT that counts and reads the account's row; a success takes its
# reservation back later, in one DELETE with the other successes of that while (counted
# apart, below).
AUTH_COSTS = [
    pytest.param(False, ALICE, PASSWORD, Result.YES, 1, id="success"),
    pytest.param(False, ALICE, "wrong", Result.NO, 1, id="bad-password"),
    pytest.param(False, "nobody@example.test", "wrong", Result.NO, 1, id="unknown-user"),
    pytest.param(True, ALICE, PASSWORD, Result.YES, 2, id="throttled-success"),
    pytest.param(True, ALICE, "wrong", Result.NO, 2, id="throttled-bad-password"),
    pytest.param(True, "nobody@example.test", "wrong", Result.NO, 2,
                 id="throttled-unknown-user"),
]


class TestStatementsPerRequest:
    @pytest.mark.parametrize(("throttle", "user", "password", "result", "cost"), AUTH_COSTS)
    def test_an_uncached_auth_sends_this_many_statements(
            self, alice: Database, throttle: bool, user: str, password: str, result: Result,
            cost: int) -> None:
        decider = _decider(alice, throttle=throttle)
        count = Statements(alice)
        try:
            _auth(decider, "warm-up", user)  # the pool's connection exists before counting
            answers: list[Decision] = []
            assert count.of(lambda: answers.append(_auth(decider, password, user))) == cost
            assert answers[0].result is result
        finally:
            decider.close()

    @pytest.mark.parametrize(("logins", "deletes"), [(1, 1), (10, 1), (64, 1), (65, 2)])
    def test_successes_are_taken_back_together(self, alice: Database, logins: int,
                                               deletes: int) -> None:
        """N successful logins (N users from N networks) send 2 statements each, then one
        DELETE per 64 of them when their batch is flushed, and leave no row counted."""
        hashed = Hasher(FAST_HASHING).hash(PASSWORD)
        store = OwnAccountStore(alice)
        users = [f"user{i}@example.test" for i in range(logins)]
        for user in users:
            store.add(parse_address(user), hashed)
        decider = _decider(alice, throttle=True)
        throttle = decider.defenses.throttle
        assert throttle is not None
        count = Statements(alice)
        try:
            _auth(decider, "warm-up")  # the pool's connection exists before counting
            answers: list[Decision] = []

            def logins_from_many_networks() -> None:
                for i, user in enumerate(users):
                    answers.append(decide_auth(decider, AuthRequest(
                        "PLAIN", user, PASSWORD, f"198.51.{i // 250}.{i % 250 + 1}")))

            assert count.of(logins_from_many_networks) == 2 * logins
            assert {a.result for a in answers} == {Result.YES}
            held = AttemptStore(alice).list(utcnow() - dt.timedelta(days=1))
            assert sum(r.failures for r in held if r.scope == "user") == logins + 1  # + warm-up
            assert count.of(throttle.flush) == deletes
            held = AttemptStore(alice).list(utcnow() - dt.timedelta(days=1))
            assert [(r.scope, r.subject) for r in held] == [
                ("ip", f"{CLIENT}/32"), ("user", ALICE)]  # the warm-up's wrong password
        finally:
            decider.close()

    def test_a_cached_auth_sends_none(self, alice: Database) -> None:
        decider = _decider(alice, throttle=True, cache=True)
        count = Statements(alice)
        try:
            assert _auth(decider, PASSWORD).result is Result.YES
            read = credentials(ALICE, PASSWORD, CLIENT)
            answers: list[Decision | None] = []
            assert count.of(lambda: answers.append(decider.defenses.cached_auth(read))) == 0
            assert answers[0] == Decision.yes(Reason.OK_CACHED)
        finally:
            decider.close()

    @pytest.mark.parametrize(("sender", "cost"), [
        pytest.param(ALICE, 0, id="own-address"),
        pytest.param("someone@partner.test", 1, id="granted"),
        pytest.param("someone@else.test", 1, id="refused"),
    ])
    def test_a_relay_reads_the_grants_only_for_a_foreign_sender(
            self, alice: Database, sender: str, cost: int) -> None:
        decider = _decider(alice, throttle=False)
        count = Statements(alice)
        try:
            _auth(decider, PASSWORD)  # the pool's connection exists before counting
            request = RelayRequest(ALICE, sender, "rcpt@dest.test", CLIENT)
            assert count.of(lambda: decide_relay(decider, request)) == cost
        finally:
            decider.close()


def _kill(admin: sa.Engine, conn_id: int) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text("KILL CONNECTION :id"), {"id": conn_id})


def _pooled_id(db: Database) -> int:
    return db.run("connection id",
                  lambda conn: int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()),
                  primary=True)


@pytest.fixture
def mariadb_alice(mariadb_url: str) -> Iterator[Database]:
    from eximauthd.db import upgrade  # noqa: PLC0415

    db = Database(DatabaseConfig(url=mariadb_url))
    upgrade.upgrade(db)
    OwnAccountStore(db).add(parse_address(ALICE), Hasher(FAST_HASHING).hash(PASSWORD))
    yield db
    db.dispose()


class TestLostConnections:
    @pytest.mark.parametrize("throttle", [False, True], ids=["plain", "throttled"])
    def test_a_killed_pooled_connection_is_retried_once_transparently(
            self, mariadb_alice: Database, mariadb_admin: sa.Engine, throttle: bool,
            caplog: pytest.LogCaptureFixture) -> None:
        decider = _decider(mariadb_alice, throttle=throttle)
        try:
            assert _auth(decider, PASSWORD).result is Result.YES
            killed = _pooled_id(mariadb_alice)
            _kill(mariadb_admin, killed)
            with caplog.at_level(logging.INFO, logger="eximauthd.db"):
                assert _auth(decider, PASSWORD).result is Result.YES
            assert "connection was lost; trying once more" in caplog.text
            assert _pooled_id(mariadb_alice) != killed
        finally:
            decider.close()

    def test_a_lost_connection_whose_retry_fails_too_defers(
            self, mariadb_alice: Database, mariadb_admin: sa.Engine) -> None:
        """The retry reaches a database that is gone: defer, never yes."""
        decider = _decider(mariadb_alice, throttle=False)
        try:
            assert _auth(decider, PASSWORD).result is Result.YES
            name = sa.make_url(mariadb_alice.config.url).database
            killed = _pooled_id(mariadb_alice)
            with mariadb_admin.begin() as conn:
                quoted = mariadb_admin.dialect.identifier_preparer.quote(str(name))
                conn.execute(sa.text(f"DROP DATABASE {quoted}"))
            _kill(mariadb_admin, killed)
            assert _auth(decider, PASSWORD) == Decision.defer(Reason.DATABASE_UNAVAILABLE)
        finally:
            decider.close()

    def test_a_statement_that_is_not_idempotent_is_not_retried(
            self, mariadb_alice: Database, mariadb_admin: sa.Engine) -> None:
        runs: list[int] = []

        def work(conn: sa.Connection) -> None:
            runs.append(1)
            conn.exec_driver_sql("SELECT 1").all()

        mariadb_alice.run("warm up", work, primary=True)
        _kill(mariadb_admin, _pooled_id(mariadb_alice))
        with pytest.raises(StorageError, match=r"lost connection|gone away"):
            mariadb_alice.run("add counts", work, primary=True, retry=False)
        assert len(runs) == 2  # the warm-up and the one unretried try

    def test_a_transaction_whose_connection_was_lost_runs_once_more_and_applies_once(
            self, mariadb_alice: Database, mariadb_admin: sa.Engine) -> None:
        """The server rolled back the first try: the retry's counts are added once."""
        table = sa.Table("tally", sa.MetaData(), sa.Column("n", sa.Integer))
        table.create(mariadb_alice.primary)
        killed = mariadb_alice.transact("connection id", lambda conn: int(
            conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()))
        tries: list[int] = []

        def add(conn: sa.Connection) -> None:
            tries.append(1)
            conn.execute(sa.insert(table).values(n=1))

        _kill(mariadb_admin, killed)
        mariadb_alice.transact("add", add)
        with mariadb_alice.primary.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 1
        assert len(tries) == 2

    def test_a_database_that_is_down_defers(self) -> None:
        # Nothing listens on port 1 of the loopback: connecting fails at once.
        config = replace(config_for("mysql+pymysql://root@127.0.0.1:1/none"),
                         throttle=ThrottleConfig(enabled=True))
        decider = Decider(config)
        try:
            assert _auth(decider, PASSWORD) == Decision.defer(Reason.DATABASE_UNAVAILABLE)
        finally:
            decider.close()


class TestFreshReads:
    @pytest.mark.parametrize("throttle", [False, True], ids=["plain", "throttled"])
    def test_a_password_changed_on_another_connection_is_seen_at_once(
            self, mariadb_alice: Database, throttle: bool) -> None:
        """No REPEATABLE READ snapshot outlives a statement on the pooled connection."""
        decider = _decider(mariadb_alice, throttle=throttle)
        other = Database(mariadb_alice.config)  # as `eximauthd user passwd` would
        try:
            assert _auth(decider, PASSWORD).result is Result.YES
            OwnAccountStore(other).set_password(parse_address(ALICE),
                                                Hasher(FAST_HASHING).hash("new-password"))
            assert _auth(decider, PASSWORD) == Decision.no(Reason.BAD_PASSWORD)
            assert _auth(decider, "new-password").result is Result.YES
        finally:
            decider.close()
            other.dispose()


LEGACY = LegacyConfig(table="narrow", address_column="email", password_column="pw",
                      password_scheme="plain")


def _refusing_table(db: Database) -> None:
    """A legacy table whose password column cannot take an argon2id hash: too narrow on
    MariaDB (strict mode refuses the write), a trigger refusing every update on SQLite."""
    table = sa.Table("narrow", sa.MetaData(),
                     sa.Column("email", sa.String(120), primary_key=True),
                     sa.Column("pw", sa.String(32)))
    table.create(db.primary)
    with db.primary.begin() as conn:
        conn.execute(sa.insert(table).values(email=ALICE, pw=PASSWORD))
        if not db.is_mysql:
            conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE UPDATE ON narrow "
                                 "BEGIN SELECT RAISE(ABORT, 'read-only'); END")


class TestRehashBackoff:
    def test_a_refused_rehash_is_not_tried_again_for_a_while(
            self, database: Database, caplog: pytest.LogCaptureFixture) -> None:
        _refusing_table(database)
        now = [1000.0]
        authn = Authenticator(LegacyAccountStore(database, LEGACY), Hasher(FAST_HASHING),
                              clock=lambda: now[0])
        count = Statements(database)
        login = credentials(ALICE, PASSWORD, CLIENT)
        with caplog.at_level(logging.WARNING, logger="eximauthd.authn"):
            assert authn.check(login) == Decision.yes()  # lookup, refused UPDATE
            # MariaDB: the column is too narrow, which is said once per process, at length;
            # SQLite: the trigger refuses, which is said at each try.
            said = "not upgraded to argon2id" if database.is_mysql else "could not upgrade"
            refused = caplog.text.count(said)
            costs = [count.of(lambda: authn.check(login)) for _ in range(3)]
            now[0] += REHASH_BACKOFF_SECONDS + 1
            retried = count.of(lambda: authn.check(login))
        assert refused == 1
        assert costs == [1, 1, 1]  # the lookup only: no write, no log line
        # once more after the back-off (a too-narrow column only once in all)
        assert caplog.text.count(said) == (1 if database.is_mysql else 2)
        assert retried >= 2  # the lookup and the refused write
