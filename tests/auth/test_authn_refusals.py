"""Every refusal of eximauthd.auth.authn, pinned by the decision Exim gets (``yes``/``no``), on
SQLite and MariaDB: the password-size edge, ambiguous and disabled accounts, the dummy work
that hides which users exist, and what a success leaves in the AUTH cache."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from eximauthd.auth.authn import REHASH_BACKOFF_SECONDS, Authenticator
from eximauthd.auth.cache import AuthCache
from eximauthd.core.addresses import Address, parse_address
from eximauthd.core.decision import Decision, Result
from eximauthd.core.hashing import Hasher
from eximauthd.db.accounts import LegacyAccountStore, OwnAccountStore
from eximauthd.db.engine import Database
from eximauthd.errors import ValueTooLongError

from ..support import FAST_HASHING, SEED_LEGACY, create_seed_table, credentials

PASSWORD = "correct horse"
ALICE = "alice@example.test"


class CountingHasher(Hasher):
    """The real Hasher, counting the dummy verifications it is asked for (a spy, not a mock:
    every call still runs argon2id)."""

    def __init__(self) -> None:
        super().__init__(FAST_HASHING)
        self.dummies = 0

    def verify_dummy(self, password: str) -> None:
        self.dummies += 1
        super().verify_dummy(password)


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def store(database: Database, hasher: CountingHasher) -> OwnAccountStore:
    store = OwnAccountStore(database)
    store.add(parse_address(ALICE), hasher.hash(PASSWORD))
    return store


def test_a_password_of_exactly_the_limit_can_log_in(database: Database,
                                                    hasher: CountingHasher) -> None:
    """A 1024-byte password is a password like any other: right is yes, wrong is no."""
    store = OwnAccountStore(database)
    long_password = "é" * 512
    store.add(parse_address(ALICE), hasher.hash(long_password))
    authn = Authenticator(store, hasher)
    assert authn.verify(ALICE, long_password).result is Result.YES
    assert authn.verify(ALICE, "é" * 511 + "e").result is Result.NO


def test_an_unknown_user_is_no_and_costs_a_dummy_verification(
        store: OwnAccountStore, hasher: CountingHasher) -> None:
    """No such user: ``no``, after the same argon2id work a wrong password costs."""
    authn = Authenticator(store, hasher)
    assert authn.verify("nobody@example.test", PASSWORD) == Decision.no("unknown-user")
    assert hasher.dummies == 1


def test_a_wrong_argon2id_password_costs_no_second_verification(
        store: OwnAccountStore, hasher: CountingHasher) -> None:
    """A wrong password against argon2id already did the work: no dummy on top."""
    authn = Authenticator(store, hasher)
    assert authn.verify(ALICE, PASSWORD + "x") == Decision.no("bad-password")
    assert hasher.dummies == 0


def test_a_wrong_password_against_a_cheap_legacy_hash_is_padded(
        database: Database, hasher: CountingHasher) -> None:
    """A plaintext row fails in microseconds: the dummy verification pads it to argon2's cost."""
    store = OwnAccountStore(database)
    store.add(parse_address(ALICE), "{PLAIN}" + PASSWORD)
    authn = Authenticator(store, hasher)
    assert authn.verify(ALICE, PASSWORD + "x") == Decision.no("bad-password")
    assert hasher.dummies == 1


def test_two_accounts_for_one_address_are_both_refused(
        database: Database, hasher: CountingHasher, caplog: pytest.LogCaptureFixture) -> None:
    """An ambiguous address (two legacy rows) is no for either password, with the dummy work,
    and an error names the address so that an admin can remove the duplicate."""
    table = create_seed_table(database)
    with database.primary.begin() as conn:
        for password in (PASSWORD, "other"):
            conn.execute(sa.insert(table).values(username="alice", domain="example.test",
                                                 password=password, smtp=1))
    authn = Authenticator(LegacyAccountStore(database, SEED_LEGACY), hasher)
    with caplog.at_level(logging.ERROR, "eximauthd.authn"):
        assert authn.verify(ALICE, PASSWORD) == Decision.no("ambiguous-user")
    assert caplog.messages == [f"2 accounts match {ALICE}; refusing all of them"]
    assert authn.verify(ALICE, "other") == Decision.no("ambiguous-user")
    assert hasher.dummies == 2


def test_a_disabled_account_is_no_with_the_right_password_and_wrong_stays_wrong(
        store: OwnAccountStore, hasher: CountingHasher) -> None:
    """Disabled is ``no``; a wrong password on a disabled account says bad-password first,
    so the reason never confirms a guess."""
    store.set_enabled(parse_address(ALICE), False)
    authn = Authenticator(store, hasher)
    assert authn.verify(ALICE, PASSWORD) == Decision.no("disabled")
    assert authn.verify(ALICE, "guess") == Decision.no("bad-password")


def test_a_refused_stored_value_is_no_with_its_reason(database: Database,
                                                      hasher: CountingHasher) -> None:
    """A row the hasher refuses (unknown scheme) is ``no``, never ``yes``, and padded."""
    store = OwnAccountStore(database)
    store.add(parse_address(ALICE), "{NOPE}" + PASSWORD)
    authn = Authenticator(store, hasher)
    assert authn.verify(ALICE, "{NOPE}" + PASSWORD) == Decision.no("unknown-scheme")
    assert authn.verify(ALICE, PASSWORD) == Decision.no("unknown-scheme")
    assert hasher.dummies == 2


def test_a_success_is_cached_under_the_canonical_address_and_network(
        store: OwnAccountStore, hasher: CountingHasher) -> None:
    """yes stores (address, password, network) so the next AUTH is answered from memory."""
    cache = AuthCache(60, 10)
    authn = Authenticator(store, hasher, cache)
    assert authn.verify("Alice@EXAMPLE.test", PASSWORD, "192.0.2.1") == Decision.yes()
    assert cache.hit(ALICE, PASSWORD, "192.0.2.1/32")
    assert not cache.hit(ALICE, PASSWORD, "192.0.2.2/32")
    assert cache.users() == [ALICE]


@pytest.mark.parametrize(("password", "stored"), [
    (PASSWORD + "x", None),            # a failure is never cached
    (PASSWORD, "{PLAIN}" + PASSWORD),  # a success that rehashes: the row changed under it
])
def test_only_plain_successes_are_cached(database: Database, hasher: CountingHasher,
                                         password: str, stored: str | None) -> None:
    """Failures and successes that rewrote the stored value leave the cache empty."""
    store = OwnAccountStore(database)
    store.add(parse_address(ALICE), stored or hasher.hash(PASSWORD))
    cache = AuthCache(60, 10)
    Authenticator(store, hasher, cache).verify(ALICE, password, "192.0.2.1")
    assert len(cache) == 0


def test_a_forget_during_the_check_keeps_the_old_password_out_of_the_cache(
        database: Database, hasher: CountingHasher) -> None:
    """The generation is taken before the row is read: a FORGET that lands while the
    password is verified (a `user passwd` on another connection) refuses the put."""
    store = OwnAccountStore(database)
    store.add(parse_address(ALICE), hasher.hash(PASSWORD))
    cache = AuthCache(60, 10)

    class ForgettingHasher(CountingHasher):
        def verify(self, stored: str | None, password: str):  # type: ignore[no-untyped-def]
            cache.forget(ALICE)  # the FORGET arrives mid-verification
            return super().verify(stored, password)

    authn = Authenticator(store, ForgettingHasher(), cache)
    assert authn.verify(ALICE, PASSWORD, "192.0.2.1") == Decision.yes()
    assert not cache.hit(ALICE, PASSWORD, "192.0.2.1/32")


def test_an_upgrade_answers_ok_rehashed_and_stores_argon2id(database: Database,
                                                            hasher: CountingHasher) -> None:
    """A right legacy password is yes (ok-rehashed) and the row now holds argon2id."""
    store = OwnAccountStore(database)
    store.add(parse_address(ALICE), "{PLAIN}" + PASSWORD)
    authn = Authenticator(store, hasher)
    assert authn.verify(ALICE, PASSWORD) == Decision.yes("ok-rehashed")
    stored = store.find(parse_address(ALICE))[0].password
    assert stored is not None
    assert stored.startswith("$argon2id$")
    assert authn.verify(ALICE, PASSWORD) == Decision.yes()


def test_a_user_forgotten_before_the_check_is_cached_again(
        store: OwnAccountStore, hasher: CountingHasher) -> None:
    """authn takes the cache's current generation: a FORGET long before this AUTH does not
    keep its success out of the cache (the cache would otherwise be off for that user)."""
    cache = AuthCache(60, 10)
    cache.forget(ALICE)
    authn = Authenticator(store, hasher, cache)
    assert authn.verify(ALICE, PASSWORD, "192.0.2.1") == Decision.yes()
    assert cache.hit(ALICE, PASSWORD, "192.0.2.1/32")


def test_without_a_client_address_the_success_is_cached_for_local_clients(
        store: OwnAccountStore, hasher: CountingHasher) -> None:
    """A local submission (no client ip) is cached under the empty address."""
    cache = AuthCache(60, 10)
    assert Authenticator(store, hasher, cache).verify(ALICE, PASSWORD) == Decision.yes()
    assert cache.hit(ALICE, PASSWORD, None)


@pytest.mark.parametrize(("client_ip", "shown"), [
    ("192.0.2.1", "192.0.2.1"), ("", "-"), (None, "-")])  # None: not given at all
def test_an_upgrade_is_logged_with_scheme_address_and_client(
        database: Database, hasher: CountingHasher, client_ip: str | None, shown: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """The upgrade line names scheme, account and client (``-`` for none), never a secret."""
    store = OwnAccountStore(database)
    store.add(parse_address(ALICE), "{PLAIN}" + PASSWORD)
    authn = Authenticator(store, hasher)
    with caplog.at_level(logging.INFO, "eximauthd.authn"):
        decision = (authn.verify(ALICE, PASSWORD) if client_ip is None
                    else authn.verify(ALICE, PASSWORD, client_ip))
    assert decision == Decision.yes("ok-rehashed")
    assert caplog.messages == [
        f"upgraded plain password of {ALICE} to argon2id (client {shown})"]


def test_a_password_changed_during_the_check_is_not_overwritten(
        database: Database, caplog: pytest.LogCaptureFixture) -> None:
    """`user passwd` committing while a legacy password is verified wins: the login is yes,
    the new value stays, and the log says why nothing was upgraded."""
    store = OwnAccountStore(database)
    store.add(parse_address(ALICE), "{PLAIN}" + PASSWORD)

    class RacingHasher(CountingHasher):
        def verify(self, stored: str | None, password: str):  # type: ignore[no-untyped-def]
            store.set_password(parse_address(ALICE), "{PLAIN}new")  # committed meanwhile
            return super().verify(stored, password)

    with caplog.at_level(logging.INFO, "eximauthd.authn"):
        assert Authenticator(store, RacingHasher()).verify(ALICE, PASSWORD) == Decision.yes()
    assert store.find(parse_address(ALICE))[0].password == "{PLAIN}new"
    assert caplog.messages == [f"password of {ALICE} changed meanwhile; not upgraded"]


def test_a_failed_upgrade_is_still_yes_and_logged_without_secrets(
        database: Database, caplog: pytest.LogCaptureFixture) -> None:
    """The password was right: a database error while storing the upgrade is logged (scheme,
    account, error) and the answer stays yes."""
    store = OwnAccountStore(database)
    store.add(parse_address(ALICE), "{PLAIN}" + PASSWORD)

    class DroppingHasher(CountingHasher):
        def verify(self, stored: str | None, password: str):  # type: ignore[no-untyped-def]
            result = super().verify(stored, password)
            with database.primary.begin() as conn:  # the table is gone before the write
                conn.execute(sa.text("DROP TABLE eximauthd_users"))
            return result

    with caplog.at_level(logging.WARNING, "eximauthd.authn"):
        assert Authenticator(store, DroppingHasher()).verify(ALICE, PASSWORD) == Decision.yes()
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith(
        f"could not upgrade plain password of {ALICE} to argon2id: rehash password: ")
    assert PASSWORD not in caplog.text


def test_a_hash_shaped_row_is_reported_once_per_account_with_the_fix(
        database: Database, hasher: CountingHasher, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One error line per account, naming the kind and the setting; the memory of it bounded."""
    from eximauthd.auth import authn  # noqa: PLC0415

    monkeypatch.setattr(authn, "_REPORTED_MAX", 2)
    store = OwnAccountStore(database)
    md5_of_secret = "5ebe2294ecd0e0f08eab7690d2a6ee69"
    users = ["a@example.test", "b@example.test", "c@example.test"]
    for user in users:
        store.add(parse_address(user), md5_of_secret)
    checker = Authenticator(store, hasher)
    with caplog.at_level(logging.ERROR, "eximauthd.authn"):
        for user in [*users, "a@example.test", "c@example.test"]:
            assert checker.verify(user, md5_of_secret).result is Result.NO
    expected = ("refusing the stored password of {}: a bare value shaped like md5-hex is never "
                "taken as plaintext; set [legacy] password_scheme (docs/passwords.md)")
    # a, b; c finds the memory full (2) and starts it afresh; a is then new again; c is known.
    assert caplog.messages == [expected.format(u) for u in [*users, "a@example.test"]]
    assert md5_of_secret not in caplog.text


@pytest.mark.parametrize(("copies", "expected"), [
    (1, Decision.yes()),
    (0, Decision.no("unknown-user")),
    (2, Decision.no("ambiguous-user")),
])
def test_rows_read_with_the_throttle_counts_decide_without_a_second_read(
        store: OwnAccountStore, hasher: CountingHasher, copies: int,
        expected: Decision) -> None:
    """The rows the caller read (with the throttle's counts, in one statement) are what is
    decided: the account deleted since is not looked up again."""
    address = parse_address(ALICE)
    query = store.lookup(address)
    rows = store.db.run("look up user", lambda conn: conn.execute(query).all())
    store.delete(address)
    authn = Authenticator(store, hasher)
    assert authn.check(credentials(ALICE, PASSWORD), rows=list(rows) * copies) == expected
    assert authn.check(credentials(ALICE, PASSWORD)) == Decision.no("unknown-user")


class Clock:
    """The monotonic clock the back-off reads, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refuse_password_changes(database: Database, refuse: bool = True) -> None:
    """A database that refuses eximauthd's UPDATE (a read-only user or server): a trigger."""
    with database.primary.begin() as conn:
        if not refuse:
            conn.exec_driver_sql("DROP TRIGGER refuse")
        elif database.is_mysql:
            conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE UPDATE ON eximauthd_users "
                                 "FOR EACH ROW SIGNAL SQLSTATE '45000' "
                                 "SET MESSAGE_TEXT = 'read-only'")
        else:
            conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE UPDATE ON eximauthd_users "
                                 "BEGIN SELECT RAISE(ABORT, 'read-only'); END")


def _legacy_accounts(database: Database, *users: str) -> OwnAccountStore:
    store = OwnAccountStore(database)
    for user in users:
        store.add(parse_address(user), "{PLAIN}" + PASSWORD)
    return store


@pytest.mark.parametrize(("elapsed", "retried"), [
    (0.0, False),
    (REHASH_BACKOFF_SECONDS - 1, False),
    (REHASH_BACKOFF_SECONDS, True),
    (REHASH_BACKOFF_SECONDS + 1, True),
])
def test_a_refused_upgrade_is_not_tried_again_for_that_account_until_the_back_off_ends(
        database: Database, hasher: CountingHasher, caplog: pytest.LogCaptureFixture,
        elapsed: float, retried: bool) -> None:
    """A refused write is said once with when it is tried next; until then the same account
    logs in on its legacy hash without a write or a line; once over, the upgrade is tried
    (here the database takes it again)."""
    store = _legacy_accounts(database, ALICE)
    _refuse_password_changes(database)
    clock = Clock()
    authn = Authenticator(store, hasher, clock=clock)
    with caplog.at_level(logging.DEBUG, "eximauthd.authn"):
        assert authn.verify(ALICE, PASSWORD) == Decision.yes()
        [refused] = caplog.records
        caplog.clear()
        _refuse_password_changes(database, refuse=False)
        clock.now += elapsed
        decision = authn.verify(ALICE, PASSWORD)
    assert refused.levelno == logging.WARNING
    assert refused.getMessage().startswith(
        f"could not upgrade plain password of {ALICE} to argon2id: rehash password: ")
    assert refused.getMessage().endswith("; not tried again for 10 minutes")
    if retried:
        assert decision == Decision.yes("ok-rehashed")
        assert caplog.messages == [f"upgraded plain password of {ALICE} to argon2id (client -)"]
    else:
        assert decision == Decision.yes()
        assert caplog.messages == []
        assert store.find(parse_address(ALICE))[0].password == "{PLAIN}" + PASSWORD


@pytest.mark.parametrize(("seconds", "minutes"), [(REHASH_BACKOFF_SECONDS, "10"),
                                                  (5400.0, "90")])
def test_the_refused_upgrade_line_tells_the_back_off_in_minutes(
        database: Database, hasher: CountingHasher, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, seconds: float, minutes: str) -> None:
    """The line says when the upgrade is tried next, whatever the back-off is set to."""
    from eximauthd.auth import authn as module  # noqa: PLC0415

    monkeypatch.setattr(module, "REHASH_BACKOFF_SECONDS", seconds)
    store = _legacy_accounts(database, ALICE)
    _refuse_password_changes(database)
    with caplog.at_level(logging.WARNING, "eximauthd.authn"):
        assert Authenticator(store, hasher, clock=Clock()).verify(ALICE, PASSWORD) == \
            Decision.yes()
    [said] = caplog.messages
    assert said.endswith(f"; not tried again for {minutes} minutes")


def test_the_back_off_of_one_account_does_not_hold_back_another(
        database: Database, hasher: CountingHasher) -> None:
    """Bob's upgrade goes ahead while Alice's is held back."""
    bob = "bob@example.test"
    store = _legacy_accounts(database, ALICE, bob)
    _refuse_password_changes(database)
    authn = Authenticator(store, hasher, clock=Clock())
    assert authn.verify(ALICE, PASSWORD) == Decision.yes()
    _refuse_password_changes(database, refuse=False)
    assert [authn.verify(ALICE, PASSWORD), authn.verify(bob, PASSWORD)] == [
        Decision.yes(), Decision.yes("ok-rehashed")]


def test_the_memory_of_backed_off_accounts_is_bounded(
        database: Database, hasher: CountingHasher, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound the memory starts afresh: the accounts held back before are tried
    again at once, the one that filled it is still held back."""
    from eximauthd.auth import authn as module  # noqa: PLC0415

    monkeypatch.setattr(module, "_BACKOFF_MAX", 2)
    users = ["a@example.test", "b@example.test", "c@example.test"]
    store = _legacy_accounts(database, *users)
    _refuse_password_changes(database)
    authn = Authenticator(store, hasher, clock=Clock())
    assert [authn.verify(user, PASSWORD) for user in users] == [Decision.yes()] * 3
    _refuse_password_changes(database, refuse=False)
    assert [authn.verify(user, PASSWORD) for user in users] == [
        Decision.yes("ok-rehashed"), Decision.yes("ok-rehashed"), Decision.yes()]


NARROW = ValueTooLongError("rehash password: the column password_hash of eximauthd_users is "
                           "too narrow for an argon2id hash")


class NarrowColumnStore(OwnAccountStore):
    """The real store, whose upgrade fails as db.engine reports MySQL error 1406 (a column
    too narrow for argon2id): SQLite has no column width to refuse with.  Counts the tries."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.tries = 0

    def replace_password(self, address: Address, old: str, new: str) -> bool:
        self.tries += 1
        raise NARROW


def test_a_too_narrow_column_is_said_once_at_length_then_quietly_and_backed_off(
        database: Database, hasher: CountingHasher, caplog: pytest.LogCaptureFixture) -> None:
    """The same for every legacy login until the column is widened: one warning with the fix,
    then a debug line per account; each account is not tried again until the back-off ends,
    and the answer stays yes."""
    bob = "bob@example.test"
    _legacy_accounts(database, ALICE, bob)
    store = NarrowColumnStore(database)
    clock = Clock()
    authn = Authenticator(store, hasher, clock=clock)
    said: list[tuple[int, str]] = []
    with caplog.at_level(logging.DEBUG, "eximauthd.authn"):
        for user, forward in [(ALICE, 0.0), (bob, 0.0), (ALICE, 0.0),
                              (ALICE, REHASH_BACKOFF_SECONDS)]:
            clock.now += forward
            assert authn.verify(user, PASSWORD) == Decision.yes()
            said.append((store.tries, " | ".join(caplog.messages)))
            assert {r.levelno for r in caplog.records} <= {
                logging.WARNING if store.tries == 1 else logging.DEBUG}
            caplog.clear()
    assert said == [
        (1, f"legacy passwords are not upgraded to argon2id: {NARROW}; logins go on with the "
            "legacy hashes (said once)"),
        (2, f"could not upgrade plain password of {bob}: column too narrow"),
        (2, ""),
        (3, f"could not upgrade plain password of {ALICE}: column too narrow"),
    ]
