"""The credential check on real databases: own schema and legacy tables, SQLite and MariaDB."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximauthd.auth.authn import Authenticator
from eximauthd.core.addresses import parse_address
from eximauthd.core.decision import Result
from eximauthd.core.hashing import Hasher, Scheme, identify_scheme
from eximauthd.db.accounts import AccountStore, LegacyAccountStore, OwnAccountStore
from eximauthd.db.engine import Database
from eximauthd.errors import StorageError
from eximauthd.settings import DatabaseConfig

from ..hash_shapes import PHPASS, PLAINTEXTS, SHAPED
from ..support import (
    ADDRESS_LEGACY,
    FAST_HASHING,
    SEED_LEGACY,
    create_address_table,
    create_seed_table,
)

PASSWORD = "correct horse ✓ 'quote\" \\"


@dataclass
class Accounts:
    """One way of storing accounts, with helpers to put raw rows in it."""

    kind: str
    store: AccountStore
    table: sa.Table | None

    def insert_raw(self, address: str, stored: str | None, *, enabled: bool = True) -> None:
        """Write a row as a legacy system would (plaintext, old hashes) without our code."""
        local, domain = address.split("@")
        legacy = self.store.legacy if isinstance(self.store, LegacyAccountStore) else None
        if legacy is None:
            self.store.add(parse_address(address), stored or "")
            if not enabled:
                self.store.set_enabled(parse_address(address), False)
            return
        assert self.table is not None
        values: dict[str, object] = {legacy.password_column: stored}
        if legacy.address_column:
            values[legacy.address_column] = address
        else:
            values |= {legacy.local_part_column: local, legacy.domain_column: domain}
        values[legacy.enabled_column] = legacy.enabled_value if enabled else legacy.disabled_value
        with self.store.db.primary.begin() as conn:
            conn.execute(sa.insert(self.table).values(values))

    def stored(self, address: str) -> str | None:
        records = self.store.find(parse_address(address))
        assert len(records) == 1
        return records[0].password


@pytest.fixture(params=["own", "seed-legacy", "address-legacy"])
def accounts(request: pytest.FixtureRequest, database: Database) -> Accounts:
    """Accounts in eximauthd_users, in the seed's users table, or in a one-column table."""
    if request.param == "own":
        return Accounts("own", OwnAccountStore(database), None)
    if request.param == "seed-legacy":
        return Accounts("seed", LegacyAccountStore(database, SEED_LEGACY),
                        create_seed_table(database))
    return Accounts("address", LegacyAccountStore(database, ADDRESS_LEGACY),
                    create_address_table(database))


@pytest.fixture
def authn(accounts: Accounts, hasher: Hasher) -> Authenticator:
    accounts.insert_raw("alice@example.test", hasher.hash(PASSWORD))
    return Authenticator(accounts.store, hasher)


class TestDecisions:
    """yes only for the right password of an enabled account."""

    def test_right_password_is_yes(self, authn: Authenticator) -> None:
        """The positive control."""
        decision = authn.verify("alice@example.test", PASSWORD, "192.0.2.1")
        assert (decision.result, decision.reason) == (Result.YES, "ok")

    def test_domain_and_local_part_are_caseless(self, authn: Authenticator) -> None:
        """Exim compares local parts caselessly by default, domains always."""
        assert authn.verify("Alice@EXAMPLE.Test", PASSWORD).allowed

    @pytest.mark.parametrize(("username", "password", "reason"), [
        ("", "", "empty-username"),
        ("", PASSWORD, "empty-username"),
        ("alice@example.test", "", "empty-password"),
        ("nobody@example.test", "", "empty-password"),
        ("alice@example.test", PASSWORD + "x", "bad-password"),
        ("alice@example.test", PASSWORD.upper(), "bad-password"),
        ("nobody@example.test", PASSWORD, "unknown-user"),
        ("alice@example.test.evil", PASSWORD, "unknown-user"),
        ("alice", PASSWORD, "malformed-username"),
        ("alice@example.test ", PASSWORD, "malformed-username"),
        ("alice@example.test\x00", PASSWORD, "malformed-username"),
        ("' OR '1'='1@example.test", PASSWORD, "malformed-username"),
        ("alice@example.test' OR smtp>0 -- ", PASSWORD, "malformed-username"),
        ("alice%@example.test", PASSWORD, "unknown-user"),
        ("al_ce@example.test", PASSWORD, "unknown-user"),
        ("alice@example.test", "x" * 2000, "password-too-long"),
        ("alice@example.test", "\udcff", "malformed-password"),
    ])
    def test_refusals(self, authn: Authenticator, username: str, password: str,
                      reason: str) -> None:
        """Each way of being wrong is a no with its own reason."""
        decision = authn.verify(username, password)
        assert (decision.result, decision.reason) == (Result.NO, reason)

    def test_disabled_account_is_no_even_with_right_password(
            self, accounts: Accounts, hasher: Hasher) -> None:
        """Disabling an account refuses it; enabling it again restores it."""
        accounts.insert_raw("bob@example.test", hasher.hash(PASSWORD), enabled=False)
        authn = Authenticator(accounts.store, hasher)
        assert authn.verify("bob@example.test", PASSWORD).reason == "disabled"
        accounts.store.set_enabled(parse_address("bob@example.test"), True)
        assert authn.verify("bob@example.test", PASSWORD).allowed

    def test_empty_stored_password_is_never_yes(
            self, accounts: Accounts, hasher: Hasher) -> None:
        """The seed's hole, stored side: an empty column matches nothing, not even ''."""
        accounts.insert_raw("empty@example.test", "")
        authn = Authenticator(accounts.store, hasher)
        assert authn.verify("empty@example.test", "").reason == "empty-password"
        assert authn.verify("empty@example.test", "x").reason == "no-password-set"

    def test_null_stored_password_is_never_yes(self, database: Database, hasher: Hasher) -> None:
        """A NULL password column in a legacy table matches nothing."""
        table = create_seed_table(database)
        with database.primary.begin() as conn:
            conn.execute(sa.insert(table).values(username="empty", domain="example.test",
                                                 password=None, smtp=1))
        authn = Authenticator(LegacyAccountStore(database, SEED_LEGACY), hasher)
        assert authn.verify("empty@example.test", "").reason == "empty-password"
        assert authn.verify("empty@example.test", "x").reason == "no-password-set"


class TestLegacyUpgrade:
    """A right legacy password is rehashed to argon2id in place, once, with compare-and-swap."""

    @pytest.mark.parametrize("stored", [
        PASSWORD,                                          # the seed: bare plaintext
        "{PLAIN}" + PASSWORD,
        "$6$saltsalt$placeholder",                         # replaced below by a real vector
    ])
    def test_legacy_password_is_upgraded(self, accounts: Accounts, hasher: Hasher,
                                         stored: str) -> None:
        """After one successful login the row holds argon2id and still verifies."""
        if stored.startswith("$6$"):
            from passlib.hash import sha512_crypt  # noqa: PLC0415 -- only this case needs it
            stored = sha512_crypt.using(rounds=5000, salt="saltsalt").hash(PASSWORD)
        accounts.insert_raw("carol@example.test", stored)
        authn = Authenticator(accounts.store, hasher)
        assert authn.verify("carol@example.test", PASSWORD + "!").reason == "bad-password"
        assert accounts.stored("carol@example.test") == stored  # a failure changes nothing
        assert authn.verify("carol@example.test", PASSWORD).reason == "ok-rehashed"
        upgraded = accounts.stored("carol@example.test")
        assert upgraded is not None
        assert identify_scheme(upgraded)[0] is Scheme.ARGON2ID
        assert authn.verify("carol@example.test", PASSWORD).reason == "ok"
        assert accounts.stored("carol@example.test") == upgraded  # no second rehash

    def test_compare_and_swap_never_overwrites_a_changed_password(
            self, accounts: Accounts, hasher: Hasher) -> None:
        """If the stored value changed since it was read, the upgrade is skipped."""
        accounts.insert_raw("dave@example.test", "old-plaintext")
        address = parse_address("dave@example.test")
        new = hasher.hash("changed-by-admin")
        accounts.store.set_password(address, new)
        assert not accounts.store.replace_password(address, "old-plaintext", hasher.hash("x"))
        assert accounts.stored("dave@example.test") == new

    def test_compare_and_swap_is_byte_exact(self, accounts: Accounts, hasher: Hasher) -> None:
        """MySQL's caseless collations must not let 'SECRET' stand for 'secret'."""
        accounts.insert_raw("erin@example.test", "secret")
        address = parse_address("erin@example.test")
        assert not accounts.store.replace_password(address, "SECRET", hasher.hash("SECRET"))
        assert not accounts.store.replace_password(address, "secret ", hasher.hash("x"))
        assert accounts.stored("erin@example.test") == "secret"


class TestLegacyShapes:
    """Legacy-table specifics."""

    def test_duplicate_rows_refuse_the_login(self, database: Database, hasher: Hasher) -> None:
        """Two rows for one address: refuse rather than pick one."""
        table = create_seed_table(database)
        with database.primary.begin() as conn:
            conn.execute(sa.insert(table), [
                {"username": "frank", "domain": "example.test", "password": "a", "smtp": 1},
                {"username": "Frank", "domain": "EXAMPLE.test", "password": "b", "smtp": 1},
            ])
        authn = Authenticator(LegacyAccountStore(database, SEED_LEGACY), hasher)
        assert authn.verify("frank@example.test", "a").reason == "ambiguous-user"

    def test_enabled_rule_follows_config(self, database: Database, hasher: Hasher) -> None:
        """smtp = 0 is disabled under "> 0", enabled under "= 0"."""
        table = create_seed_table(database)
        with database.primary.begin() as conn:
            conn.execute(sa.insert(table).values(username="gina", domain="example.test",
                                                 password="pw", smtp=0))
        gt = Authenticator(LegacyAccountStore(database, SEED_LEGACY), hasher)
        assert gt.verify("gina@example.test", "pw").reason == "disabled"
        eq = replace(SEED_LEGACY, enabled_when="= 0", enabled_value="0", disabled_value="1")
        assert Authenticator(LegacyAccountStore(database, eq), hasher).verify(
            "gina@example.test", "pw").allowed

    @pytest.mark.parametrize("active", ["N", "n ", "\u00f1", ""])
    def test_negative_enabled_rule_keeps_disabled_spellings_disabled(
            self, database: Database, hasher: Hasher, active: str) -> None:
        """Under enabled_when = "!= 'n'", 'N' and 'n ' (disabled to the old SQL) stay disabled."""
        table = sa.Table("mailbox", sa.MetaData(),
                         sa.Column("email", sa.String(320), primary_key=True),
                         sa.Column("pw", sa.String(255), nullable=True),
                         sa.Column("active", sa.String(4), nullable=False))
        table.create(database.primary)
        with database.primary.begin() as conn:
            conn.execute(sa.insert(table).values(email="hal@example.test", pw="pw",
                                                 active=active))
        legacy = replace(ADDRESS_LEGACY, enabled_when="!= 'n'")
        decision = Authenticator(LegacyAccountStore(database, legacy), hasher).verify(
            "hal@example.test", "pw")
        assert not decision.allowed
        assert decision.reason == "disabled"


# kind (= the password_scheme that verifies it) -> (stored bare, the password it stands for).
# The MariaDB values are its own functions' output: SELECT PASSWORD('secret'), MD5('secret').
BARE_HASHES = {
    "md5-hex": ("5ebe2294ecd0e0f08eab7690d2a6ee69", "secret"),
    "sha1-hex": ("E5E9FA1BA31ECD1AE84F75CAAA474F3A663F05F4", "secret"),
    "sha256-hex": (hashlib.sha256(PASSWORD.encode()).hexdigest(), PASSWORD),
    "sha512-hex": (hashlib.sha512(b"hunter2").hexdigest(), "hunter2"),
    "mysql-native": ("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7", "secret"),
    "mysql323-hex": ("428567f408994404", "secret"),  # MariaDB: SELECT OLD_PASSWORD('secret')
    "des-crypt": ("abNANd1rDfiNc", "secret"),  # glibc: perl -e 'print crypt("secret","ab")'
}


class TestBareHashes:
    """Issue 12.4: a legacy row holding a bare hash never logs in with the hash itself."""

    def _insert_all(self, accounts: Accounts) -> None:
        for kind, (stored, _) in BARE_HASHES.items():
            accounts.insert_raw(f"{kind}@example.test", stored)

    def test_auto_refuses_hash_and_password_and_logs_once_per_account(
            self, accounts: Accounts, caplog: pytest.LogCaptureFixture) -> None:
        """password_scheme = "auto": the hash is no, the real password is no unknown-scheme,
        the row is untouched, and each account is logged once with its kind, never its value."""
        self._insert_all(accounts)
        authn = Authenticator(accounts.store, Hasher(FAST_HASHING))
        with caplog.at_level(logging.DEBUG, "eximauthd"):
            for _ in range(3):
                for kind, (stored, password) in BARE_HASHES.items():
                    address = f"{kind}@example.test"
                    as_hash = authn.verify(address, stored)
                    assert (as_hash.result, as_hash.reason) == (Result.NO, "unknown-scheme")
                    real = authn.verify(address, password)
                    assert (real.result, real.reason) == (Result.NO, "unknown-scheme")
                    assert accounts.stored(address) == stored
        for kind, (stored, _) in BARE_HASHES.items():
            lines = [r.getMessage() for r in caplog.records
                     if f"of {kind}@example.test:" in r.getMessage()]
            assert len(lines) == 1, lines
            assert f"shaped like {kind}" in lines[0]
            assert "password_scheme" in lines[0]
            assert stored not in caplog.text
            assert stored.lower() not in caplog.text.lower()

    @pytest.mark.parametrize("kind", list(BARE_HASHES))
    def test_matching_scheme_accepts_the_password_not_the_hash_and_upgrades(
            self, accounts: Accounts, kind: str) -> None:
        """password_scheme = KIND: the hash is no bad-password, the real password is yes and the
        row becomes argon2id, which then verifies as such."""
        stored, password = BARE_HASHES[kind]
        address = f"{kind}@example.test"
        accounts.insert_raw(address, stored)
        authn = Authenticator(accounts.store, Hasher(FAST_HASHING, password_scheme=kind))
        as_hash = authn.verify(address, stored)
        assert (as_hash.result, as_hash.reason) == (Result.NO, "bad-password")
        assert accounts.stored(address) == stored
        real = authn.verify(address, password)
        assert (real.result, real.reason) == (Result.YES, "ok-rehashed")
        upgraded = accounts.stored(address) or ""
        assert identify_scheme(upgraded)[0] is Scheme.ARGON2ID
        assert authn.verify(address, password).reason == "ok"
        assert authn.verify(address, stored).reason == "bad-password"

    def test_failed_cheap_checks_are_padded_with_argon2(self, accounts: Accounts) -> None:
        """A wrong password against a cheap unsalted hash, or an unknown-scheme refusal, costs
        one dummy argon2id verification, like an unknown user does."""
        self._insert_all(accounts)

        class Counting(Hasher):
            dummies = 0

            def verify_dummy(self, password: str) -> None:
                Counting.dummies += 1
                super().verify_dummy(password)

        auto = Authenticator(accounts.store, Counting(FAST_HASHING))
        named = {kind: Authenticator(accounts.store,
                                     Counting(FAST_HASHING, password_scheme=kind))
                 for kind in BARE_HASHES}
        for kind in BARE_HASHES:
            before = Counting.dummies
            assert not auto.verify(f"{kind}@example.test", "wrong").allowed
            assert not named[kind].verify(f"{kind}@example.test", "wrong").allowed
            assert Counting.dummies == before + 2, kind


class TestEveryHashShape:
    """F2: no bare value shaped like a hash logs in as itself; real plaintext still does."""

    def test_shaped_values_are_no_and_plaintexts_yes_under_auto(
            self, accounts: Accounts, caplog: pytest.LogCaptureFixture) -> None:
        """Each shaped row (OLD_PASSWORD(), base64, SSHA body, Django, Werkzeug, Joomla, 0x-hex,
        padded, BSDi, phpass) answers no unknown-scheme to its own value and stays as stored;
        each realistic plaintext row answers yes."""
        shaped = {f"s{i}@example.test": v for i, (_, v) in enumerate(SHAPED)}
        shaped |= {f"p{i}@example.test": v for i, v in enumerate(PHPASS)}
        plain = {f"t{i}@example.test": v for i, v in enumerate(PLAINTEXTS)}
        for address, stored in shaped.items() | plain.items():
            accounts.insert_raw(address, stored)
        authn = Authenticator(accounts.store, Hasher(FAST_HASHING))
        with caplog.at_level(logging.DEBUG, "eximauthd"):
            for address, stored in shaped.items():
                for attempt in (stored, stored.strip()):
                    decision = authn.verify(address, attempt)
                    assert (decision.result, decision.reason) == (
                        Result.NO, "unknown-scheme"), address
                assert accounts.stored(address) == stored
        for stored in shaped.values():
            assert stored.strip() not in caplog.text
        for address, password in plain.items():
            assert authn.verify(address, password).result is Result.YES, address


class TestFailClosed:
    """A database that cannot answer raises; it never yields yes."""

    def test_unreachable_database_raises_storage_error(self, hasher: Hasher) -> None:
        """Port 9 on loopback refuses connections: the check raises, the message is clean."""
        db = Database(DatabaseConfig(url="mysql+pymysql://root:topsecret@127.0.0.1:9/mail",
                                     connect_timeout=1))
        authn = Authenticator(OwnAccountStore(db), hasher)
        with pytest.raises(StorageError) as info:
            authn.verify("alice@example.test", PASSWORD)
        assert "topsecret" not in str(info.value)
        assert "cannot connect" in str(info.value)

    def test_empty_credentials_are_refused_without_the_database(self, hasher: Hasher) -> None:
        """No database work for empty input: even an unreachable one answers no, not defer."""
        db = Database(DatabaseConfig(url="mysql+pymysql://root@127.0.0.1:9/mail",
                                     connect_timeout=1))
        authn = Authenticator(OwnAccountStore(db), hasher)
        assert authn.verify("", "").reason == "empty-username"
        assert authn.verify("alice@example.test", "").reason == "empty-password"
        assert authn.verify("not an address", "x").reason == "malformed-username"

    def test_missing_table_raises(self, db_url: str, hasher: Hasher) -> None:
        """Before `db upgrade` the check raises SchemaMissingError, not no."""
        db = Database(DatabaseConfig(url=db_url))
        with pytest.raises(StorageError, match="db upgrade"):
            Authenticator(OwnAccountStore(db), hasher).verify("a@example.test", "x")
        db.dispose()


def test_no_secret_in_any_log_line(accounts: Accounts, hasher: Hasher,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """Upgrades, failures and refusals log addresses and reasons, never passwords or hashes."""
    accounts.insert_raw("henry@example.test", "henry-plain-secret")
    authn = Authenticator(accounts.store, hasher)
    with caplog.at_level(logging.DEBUG):
        authn.verify("henry@example.test", "henry-plain-secret")
        authn.verify("henry@example.test", "henry-wrong-secret")
        authn.verify("nobody@example.test", "nobody-secret")
    upgraded = accounts.stored("henry@example.test") or ""
    everything = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "upgraded plain password of henry@example.test" in caplog.text
    for secret in ("henry-plain-secret", "henry-wrong-secret", "nobody-secret",
                   upgraded, upgraded.split("$")[-1]):
        assert secret not in everything
    assert "henry-plain-secret" not in repr(accounts.store.find(parse_address(
        "henry@example.test")))


@pytest.fixture(scope="module")
def property_authn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authenticator]:
    """One SQLite account store for the property test (hypothesis reuses it across examples)."""
    from eximauthd.db import upgrade  # noqa: PLC0415
    from tests.conftest import FAST_HASHING  # noqa: PLC0415

    path = tmp_path_factory.mktemp("prop") / "p.sqlite3"
    db = Database(DatabaseConfig(url=f"sqlite:///{path}"))
    upgrade.upgrade(db)
    hasher = Hasher(FAST_HASHING)
    store = OwnAccountStore(db)
    store.add(parse_address("real@example.test"), hasher.hash("the-real-password"))
    table = create_seed_table(db)
    with db.primary.begin() as conn:
        conn.execute(sa.insert(table).values(username="seed", domain="example.test",
                                             password="", smtp=1))
    yield Authenticator(store, hasher)
    db.dispose()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(username=st.one_of(
           st.text(max_size=80),
           st.sampled_from(["real@example.test", "REAL@example.test", "", "\x00",
                            "real@example.test\x00", "'; DROP TABLE users; --@x.test"]),
           st.text(min_size=1, max_size=20).map(lambda s: (s * 10_000)[:10_000])),
       password=st.one_of(
           st.text(max_size=80),
           st.sampled_from(["", "\x00", "the-real-password\x00", "'", '"', "the-real-passwor"]),
           st.text(min_size=1, max_size=20).map(lambda s: (s * 10_000)[:10_000])))
def test_only_the_real_pair_is_ever_yes(property_authn: Authenticator, username: str,
                                        password: str) -> None:
    """No generated username/password (empty, NUL, quotes, unicode, 10 kB) is yes but the real
    pair, and nothing raises."""
    decision = property_authn.verify(username, password)
    real = username.lower() == "real@example.test" and password == "the-real-password"
    assert decision.allowed is real
    assert decision.result in {Result.YES, Result.NO}
