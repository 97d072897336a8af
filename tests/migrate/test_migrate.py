"""``migrate-passwords`` on real databases: own schema and both legacy shapes, SQLite, MariaDB."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from eximauthd.auth.authn import Authenticator
from eximauthd.core.hashing import Hasher, Scheme, identify_scheme
from eximauthd.db import tables
from eximauthd.db.accounts import LegacyAccountStore, OwnAccountStore, make_account_store
from eximauthd.db.engine import Database
from eximauthd.errors import ColumnTooNarrowError, ConfigError, SchemaMissingError
from eximauthd.migrate.candidates import Candidate
from eximauthd.migrate.column import check_column
from eximauthd.migrate.progress import Progress
from eximauthd.migrate.run import MigrationOptions, MigrationReport, migrate_passwords
from eximauthd.settings import Config, DatabaseConfig, LegacyConfig

from ..hash_shapes import PHPASS, PLAINTEXTS, SHAPED
from ..support import (
    ADDRESS_LEGACY,
    FAST_HASHING,
    FAST_HASHING_ENV,
    SEED_LEGACY,
    config_for,
    create_address_table,
    create_seed_table,
)

VECTORS = {v["id"]: v for v in json.loads(
    (Path(__file__).parent.parent / "fixtures" / "legacy_vectors.json").read_text())}
STRICT = replace(FAST_HASHING, allow_plaintext=False)

# address -> (stored value, the password it stands for or None)
PLAINTEXT = {
    "bare@example.test": ("hunter2", "hunter2"),
    "space@example.test": ("pässwörd ", "pässwörd "),  # MySQL's PAD SPACE must not eat it
    "quote@example.test": ("it's \"q\"\\x", "it's \"q\"\\x"),
    "plain@example.test": ("{PLAIN}secret", "secret"),
    "lower@example.test": ("{plain}Secret", "Secret"),
    "clear@example.test": ("{CLEARTEXT}pässwörd✓", "pässwörd✓"),
}
LEGACY = {
    "sha512@example.test": VECTORS["dove-sha512-crypt-utf8"],
    "bcrypt@example.test": VECTORS["mkpasswd-bcrypt-quote"],
    "ssha@example.test": VECTORS["dove-ssha256-secret"],
    "argon2i@example.test": VECTORS["dove-argon2i-secret"],
}
EMPTY = {"empty@example.test": "", "plainempty@example.test": "{PLAIN}"}
UNKNOWN = {"sha@example.test": "{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=",
           "yescrypt@example.test": "$y$j9T$abc$def",
           "broken@example.test": "$argon2id$not-a-hash"}


@dataclass
class Accounts:
    """One table shape with raw access to its rows, bypassing eximauthd's own code."""

    kind: str
    config: Config
    db: Database
    table: sa.Table

    @property
    def legacy(self) -> LegacyConfig | None:
        return self.config.legacy if self.config.legacy.configured else None

    def _values(self, address: str, stored: str | None) -> dict[str, Any]:
        local, domain = address.split("@")
        legacy = self.legacy
        if legacy is None:
            return {"address": address, "domain": domain, "password_hash": stored}
        values: dict[str, Any] = {legacy.password_column: stored,
                                  legacy.enabled_column: legacy.enabled_value}
        if legacy.address_column:
            values[legacy.address_column] = address
        else:
            values |= {legacy.local_part_column: local, legacy.domain_column: domain}
        return values

    def insert(self, rows: dict[str, str | None]) -> None:
        with self.db.primary.begin() as conn:
            conn.execute(sa.insert(self.table), [self._values(a, s) for a, s in rows.items()])

    def _address(self) -> sa.ColumnElement[Any]:
        legacy = self.legacy
        if legacy is None:
            return self.table.c.address
        if legacy.address_column:
            return self.table.c[legacy.address_column]
        return (self.table.c[legacy.local_part_column] + "@"
                + self.table.c[legacy.domain_column])

    def _password(self) -> sa.Column[Any]:
        legacy = self.legacy
        return self.table.c[legacy.password_column if legacy else "password_hash"]

    def snapshot(self) -> dict[str, str | None]:
        with self.db.primary.connect() as conn:
            rows = conn.execute(sa.select(self._address(), self._password())).all()
        return {str(address): stored for address, stored in rows}

    def count_argon2id(self) -> int:
        query = (sa.select(sa.func.count()).select_from(self.table)
                 .where(self._password().like("$argon2id$%")))
        with self.db.primary.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
        env |= FAST_HASHING_ENV | {"EXIMAUTHD_DATABASE_URL": self.config.database.url}
        if self.legacy is not None:
            for name in ("table", "address_column", "local_part_column", "domain_column",
                         "password_column", "enabled_column", "enabled_when", "enabled_value"):
                if value := getattr(self.legacy, name):
                    env[f"EXIMAUTHD_LEGACY_{name.upper()}"] = value
        return env


@pytest.fixture(params=["own", "seed", "address"])
def accounts(request: pytest.FixtureRequest, database: Database) -> Accounts:
    """eximauthd_users, the seed's users(username, domain, password, smtp), or mailbox(email)."""
    return _accounts(request.param, database)


def _accounts(kind: str, database: Database) -> Accounts:
    url = database.config.url
    if kind == "own":
        return Accounts("own", config_for(url), database, tables.users)
    if kind == "seed":
        return Accounts("seed", config_for(url, SEED_LEGACY), database,
                        create_seed_table(database))
    return Accounts("address", config_for(url, ADDRESS_LEGACY), database,
                    create_address_table(database))


def every_kind(accounts: Accounts, hasher: Hasher) -> dict[str, str | None]:
    rows: dict[str, str | None] = {a: s for a, (s, _) in PLAINTEXT.items()}
    rows |= {a: v["stored"] for a, v in LEGACY.items()}
    rows |= {"argon@example.test": hasher.hash("argon-pw"),
             "dovecot@example.test": "{ARGON2ID}" + hasher.hash("dove-pw")}
    rows |= EMPTY | UNKNOWN
    if accounts.legacy is not None:  # eximauthd_users.password_hash is NOT NULL
        rows["null@example.test"] = None
    accounts.insert(rows)
    return rows


def migrate(accounts: Accounts, **options: Any) -> MigrationReport:
    hook = options.pop("before_write", None)
    config = options.pop("config", accounts.config)
    return migrate_passwords(config, accounts.db, MigrationOptions(**({"jobs": 1} | options)),
                             before_write=hook)


class TestEveryKindOfRow:
    """Plaintext becomes argon2id; nothing else is touched; everything is counted."""

    def test_counts_and_values(self, accounts: Accounts, hasher: Hasher) -> None:
        """Only the plaintext rows change, and the report counts every kind."""
        before = every_kind(accounts, hasher)
        report = migrate(accounts, batch_size=3, jobs=2)
        after = accounts.snapshot()
        for address, stored in before.items():
            if address in PLAINTEXT:
                assert after[address] != stored
                assert identify_scheme(after[address] or "")[0] is Scheme.ARGON2ID
            else:
                assert after[address] == stored, address
        assert report.examined == len(before)
        assert report.migrated == len(PLAINTEXT)
        assert report.already_argon2id == 2
        assert dict(report.legacy_kept) == {"sha512-crypt": 1, "bcrypt": 1, "ssha256": 1,
                                            "argon2i": 1}
        assert report.empty == len(EMPTY) + (accounts.legacy is not None)
        assert set(report.empty_examples) == {a for a in before if a in EMPTY or "null" in a}
        assert report.unknown == len(UNKNOWN)
        assert set(report.unknown_examples) == set(UNKNOWN)
        assert report.changed == 0
        assert not report.dry_run

    def test_every_user_logs_in_with_the_original_password(self, accounts: Accounts,
                                                           hasher: Hasher) -> None:
        """Migrated rows verify as argon2id even with plaintext switched off."""
        every_kind(accounts, hasher)
        migrate(accounts, batch_size=4)
        store = make_account_store(accounts.config, accounts.db)
        authn = Authenticator(store, Hasher(STRICT))
        for address, (_, password) in PLAINTEXT.items():
            decision = authn.verify(address, password)
            assert (decision.result.value, decision.reason) == ("yes", "ok"), address
            assert authn.verify(address, password + "x").reason == "bad-password"
        assert authn.verify("argon@example.test", "argon-pw").reason == "ok"
        assert authn.verify("dovecot@example.test", "dove-pw").reason == "ok"
        for address, vector in LEGACY.items():  # still theirs, upgraded at this login
            assert authn.verify(address, vector["password"]).reason == "ok-rehashed"
        assert authn.verify("empty@example.test", "x").reason == "no-password-set"

    def test_rerun_never_hashes_a_hash(self, accounts: Accounts, hasher: Hasher) -> None:
        """A second run finds only argon2id and leaves every value as it was."""
        every_kind(accounts, hasher)
        migrate(accounts)
        first = accounts.snapshot()
        again = migrate(accounts)
        assert accounts.snapshot() == first
        assert again.migrated == 0
        assert again.already_argon2id == 2 + len(PLAINTEXT)

    def test_dovecot_prefix_is_honoured(self, accounts: Accounts) -> None:
        """hashing.dovecot_prefix writes {ARGON2ID}$argon2id$..., which still verifies."""
        accounts.insert({"bare@example.test": "hunter2"})
        hashing = replace(STRICT, dovecot_prefix=True)
        migrate(accounts, config=replace(accounts.config, hashing=hashing))
        stored = accounts.snapshot()["bare@example.test"] or ""
        assert stored.startswith("{ARGON2ID}$argon2id$")
        store = make_account_store(accounts.config, accounts.db)
        assert Authenticator(store, Hasher(hashing)).verify("bare@example.test",
                                                            "hunter2").reason == "ok"

    def test_dry_run_writes_nothing(self, accounts: Accounts, hasher: Hasher) -> None:
        """--dry-run counts what it would do and changes no row."""
        every_kind(accounts, hasher)
        before = accounts.snapshot()
        report = migrate(accounts, dry_run=True, batch_size=2)
        assert accounts.snapshot() == before
        assert report.dry_run
        assert report.migrated == len(PLAINTEXT)
        assert report.summary()[0] == "dry run: nothing was written"

    def test_limit_stops_early_and_a_rerun_finishes(self, accounts: Accounts) -> None:
        """--limit N hashes N passwords; the next run does the rest."""
        accounts.insert({f"u{i}@example.test": f"pw{i}" for i in range(7)})
        first = migrate(accounts, limit=3, batch_size=2)
        assert (first.migrated, first.limited) == (3, True)
        assert accounts.count_argon2id() == 3
        rest = migrate(accounts)
        assert (rest.migrated, rest.already_argon2id, rest.limited) == (4, 3, False)


# Bare hashes as legacy tables hold them (MariaDB's MD5(), SHA1(), PASSWORD(); glibc crypt(3)).
BARE_HASHES = {
    "md5a@example.test": ("5ebe2294ecd0e0f08eab7690d2a6ee69", "secret"),
    "md5b@example.test": ("5EBE2294ECD0E0F08EAB7690D2A6EE69", "secret"),
    "md5c@example.test": ("2ab96390c7dbe3439de74d0c9b0b1767", "hunter2"),
    "sha1@example.test": ("e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4", "secret"),
    "mysql@example.test": ("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7", "secret"),
    "des@example.test": ("abNANd1rDfiNc", "secret"),
}
SHAPED_KINDS = {"des-crypt": 1, "md5-hex": 3, "mysql-native": 1, "sha1-hex": 1}


class TestBareHashShapes:
    """Issue 12.4: a bare hash is never hashed as if it were the password."""

    @pytest.fixture(params=["seed", "address"])
    def legacy_accounts(self, request: pytest.FixtureRequest, database: Database) -> Accounts:
        """A legacy table (password_scheme is a [legacy] setting) holding bare hashes."""
        accounts = _accounts(request.param, database)
        accounts.insert({a: s for a, (s, _) in BARE_HASHES.items()}
                        | {"bare@example.test": "hunter2"})
        return accounts

    def test_auto_reports_them_by_kind_and_never_hashes_them(
            self, legacy_accounts: Accounts) -> None:
        """Under "auto" they are kept byte for byte, counted per kind and named in a warning
        that says which password_scheme to set; plaintext next to them is still migrated."""
        before = legacy_accounts.snapshot()
        dry = migrate(legacy_accounts, dry_run=True)
        report = migrate(legacy_accounts, batch_size=2)
        after = legacy_accounts.snapshot()
        for address, (stored, _) in BARE_HASHES.items():
            assert after[address] == stored == before[address]
        assert identify_scheme(after["bare@example.test"] or "")[0] is Scheme.ARGON2ID
        for run in (dry, report):
            assert dict(run.hash_shaped) == SHAPED_KINDS
            assert run.migrated == 1
            assert run.unknown == 0
            assert dict(run.legacy_kept) == {}
        assert {a for _, a in report.hash_shaped_examples} == set(BARE_HASHES)
        assert ("md5-hex", "md5c@example.test") in report.hash_shaped_examples
        warnings = "\n".join(report.warnings())
        assert ("md5-hex: 3 row(s) kept (md5a@example.test, md5b@example.test, "
                "md5c@example.test)") in warnings
        assert 'password_scheme = "md5-hex"' in warnings
        assert 'password_scheme = "plain"' in warnings
        summary = "\n".join(report.summary())
        assert f"bare hash-shaped, kept{6:>15}" in summary
        for stored, _ in BARE_HASHES.values():
            assert stored not in warnings + summary
            assert stored.lower() not in (warnings + summary).lower()
        assert migrate(legacy_accounts).migrated == 0  # a rerun does not hash them either

    def test_auto_keeps_every_known_hash_shape_and_reports_it_by_kind(
            self, database: Database) -> None:
        """OLD_PASSWORD(), base64 digests, unprefixed SSHA, Django, Werkzeug, Joomla, 0x-hex,
        padded hex, BSDi and phpass rows are kept byte for byte, never hashed as plaintext."""
        accounts = _accounts("address", database)
        shaped = {f"s{i}@example.test": stored for i, (_, stored) in enumerate(SHAPED)}
        phpass = {f"p{i}@example.test": stored for i, stored in enumerate(PHPASS)}
        plain = {f"t{i}@example.test": text for i, text in enumerate(PLAINTEXTS)}
        accounts.insert(shaped | phpass | plain)
        report = migrate(accounts)
        after = accounts.snapshot()
        for address, stored in shaped.items() | phpass.items():
            assert after[address] == stored, address
        hasher = Hasher(STRICT)
        for address, text in plain.items():
            assert hasher.verify(after[address], text).reason == "ok", address
        kinds: dict[str, int] = {}
        for kind, _ in SHAPED:
            kinds[kind] = kinds.get(kind, 0) + 1
        assert dict(report.hash_shaped) == kinds
        assert (report.migrated, report.unknown) == (len(PLAINTEXTS), len(PHPASS))
        warnings = "\n".join(report.warnings())
        assert "django: 6 row(s) kept" in warnings
        assert 'password_scheme = "django"' not in warnings
        for stored in shaped.values():
            assert stored.strip() not in warnings
        assert migrate(accounts).migrated == 0

    def test_named_scheme_keeps_them_as_legacy_hashes(self, legacy_accounts: Accounts) -> None:
        """Under password_scheme = "md5-hex" md5 rows are legacy hashes (kept, upgraded at
        login); rows of another shape cannot log in and are never hashed either."""
        config = replace(legacy_accounts.config,
                         legacy=replace(legacy_accounts.config.legacy, password_scheme="md5-hex"))
        report = migrate(legacy_accounts, config=config)
        after = legacy_accounts.snapshot()
        for address, (stored, _) in BARE_HASHES.items():
            assert after[address] == stored
        assert dict(report.legacy_kept) == {"md5-hex": 3}
        # sha1, mysql-native, des: named by kind; "hunter2" is no md5-hex hash: unknown.
        assert dict(report.hash_shaped) == {"des-crypt": 1, "mysql-native": 1, "sha1-hex": 1}
        assert report.unknown == 1
        # "hunter2" is no md5-hex hash: reported as unknown and left as it is, never hashed.
        assert after["bare@example.test"] == "hunter2"
        assert report.migrated == 0
        store = make_account_store(config, legacy_accounts.db)
        authn = Authenticator(store, Hasher(FAST_HASHING, password_scheme="md5-hex"))
        assert authn.verify("md5c@example.test", "hunter2").reason == "ok-rehashed"

    def test_plain_hashes_them_as_the_plaintext_they_are(self, legacy_accounts: Accounts
                                                         ) -> None:
        """password_scheme = "plain": the admin says the column is plaintext, so the value
        itself becomes the argon2id-hashed password."""
        config = replace(legacy_accounts.config,
                         legacy=replace(legacy_accounts.config.legacy, password_scheme="plain"))
        report = migrate(legacy_accounts, config=config)
        assert report.migrated == len(BARE_HASHES) + 1
        assert report.hash_shaped == ()
        hasher = Hasher(STRICT)
        after = legacy_accounts.snapshot()
        for address, (stored, _) in BARE_HASHES.items():
            assert hasher.verify(after[address], stored).reason == "ok"

    def test_cli_takes_the_scheme_from_the_config(self, legacy_accounts: Accounts,
                                                  tmp_path: Path) -> None:
        """EXIMAUTHD_LEGACY_PASSWORD_SCHEME reaches migrate-passwords and check; a wrong value
        is one error line naming the key and the allowed values."""
        auto = run_cli(legacy_accounts, tmp_path, "migrate-passwords", "--dry-run")
        assert auto.returncode == 0, auto.stderr
        assert "md5-hex: 3 row(s) kept" in auto.stderr
        check = run_cli(legacy_accounts, tmp_path, "check", "md5a@example.test",
                        "--password-stdin", stdin="secret\n")
        assert (check.returncode, check.stdout.strip()) == (1, "no unknown-scheme")
        env = {"EXIMAUTHD_LEGACY_PASSWORD_SCHEME": "md5-hex"}
        named = run_cli(legacy_accounts, tmp_path, "check", "md5a@example.test",
                        "--password-stdin", stdin="5ebe2294ecd0e0f08eab7690d2a6ee69\n", env=env)
        assert (named.returncode, named.stdout.strip()) == (1, "no bad-password")
        named = run_cli(legacy_accounts, tmp_path, "check", "md5a@example.test",
                        "--password-stdin", stdin="secret\n", env=env)
        assert (named.returncode, named.stdout.strip()) == (0, "yes ok-rehashed")
        wrong = run_cli(legacy_accounts, tmp_path, "check", "md5a@example.test",
                        "--password-stdin", stdin="secret\n",
                        env={"EXIMAUTHD_LEGACY_PASSWORD_SCHEME": "md5"})
        assert wrong.returncode == 2
        assert wrong.stderr.strip().splitlines() == [
            "eximauthd: error: legacy.password_scheme: 'md5' is not one of auto, "
            "plain, md5-hex, sha1-hex, sha256-hex, sha512-hex, mysql-native, mysql323-hex, "
            "des-crypt"]


class TestConcurrentChange:
    """A password changed between the read and the swap is never overwritten."""

    @pytest.mark.parametrize("new_value", ["argon2id", "PW-B "], ids=["rehashed", "collation"])
    def test_change_between_hashing_and_writing(self, accounts: Accounts,
                                                new_value: str) -> None:
        """The row changed through a second connection keeps its new value.

        "PW-B " equals "pw-b" under MySQL's usual caseless, PAD SPACE collations: the swap must
        still see it as a different password.
        """
        accounts.insert({"a@example.test": "pw-a", "b@example.test": "pw-b",
                         "c@example.test": "pw-c"})
        other = Database(DatabaseConfig(url=accounts.config.database.url))
        other_store = (LegacyAccountStore(other, accounts.config.legacy) if accounts.legacy
                       else OwnAccountStore(other))
        changed = (Hasher(FAST_HASHING).hash("changed-by-user") if new_value == "argon2id"
                   else new_value)
        seen: list[Sequence[Any]] = []

        def change_b(keys: Sequence[tuple[Any, ...]]) -> None:
            # Rows come in key order, one per batch: the second batch is b's.
            seen.append(keys)
            if len(seen) == 2:
                from eximauthd.core.addresses import parse_address  # noqa: PLC0415
                other_store.set_password(parse_address("b@example.test"), changed)

        try:
            report = migrate(accounts, batch_size=1, before_write=change_b)
        finally:
            other.dispose()
        assert [len(keys) for keys in seen] == [1, 1, 1]
        assert (report.migrated, report.changed) == (2, 1)
        after = accounts.snapshot()
        assert after["b@example.test"] == changed
        strict = Hasher(STRICT)
        assert strict.verify(after["a@example.test"], "pw-a").reason == "ok"
        assert not strict.verify(after["b@example.test"], "pw-b").matched

    def test_case_change_in_a_nocase_sqlite_column_is_not_overwritten(self,
                                                                     sqlite_url: str) -> None:
        """A password column declared NOCASE still compares the old value byte for byte."""
        db = Database(DatabaseConfig(url=sqlite_url))
        table = sa.Table("users", sa.MetaData(),
                         sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                         sa.Column("username", sa.String(64)), sa.Column("domain", sa.String(255)),
                         sa.Column("password", sa.String(255, collation="NOCASE")),
                         sa.Column("smtp", sa.Integer))
        table.create(db.primary)
        accounts = Accounts("seed", config_for(sqlite_url, SEED_LEGACY), db, table)
        accounts.insert({"b@example.test": "pw-b"})

        def upper_b(_keys: Sequence[tuple[Any, ...]]) -> None:
            with db.primary.begin() as conn:
                conn.execute(sa.update(table).values(password="PW-B"))

        try:
            report = migrate(accounts, before_write=upper_b)
            after = accounts.snapshot()
        finally:
            db.dispose()
        assert (report.migrated, report.changed) == (0, 1)
        assert after == {"b@example.test": "PW-B"}

    def test_rows_tied_by_the_collation_are_all_migrated(self, database: Database) -> None:
        """Without a primary key, 'alice', 'ALICE' and 'Alice ' page as one key on MariaDB."""
        table = sa.Table("users", sa.MetaData(), sa.Column("username", sa.String(64)),
                         sa.Column("domain", sa.String(255)), sa.Column("password", sa.String(255)),
                         sa.Column("smtp", sa.Integer))
        table.create(database.primary)
        accounts = Accounts("seed", config_for(database.config.url, SEED_LEGACY), database, table)
        names = ["alice", "ALICE", "Alice ", "bob", "BOB", "carol"]
        with database.primary.begin() as conn:
            conn.execute(sa.insert(table), [
                {"username": name, "domain": "example.test", "password": f"pw-{name}", "smtp": 1}
                for name in names])
        report = migrate(accounts, batch_size=1)
        assert (report.examined, report.migrated, report.changed) == (6, 6, 0)
        with database.primary.connect() as conn:
            rows = conn.execute(sa.select(table.c.username, table.c.password)).all()
        strict = Hasher(STRICT)
        assert sorted(name for name, stored in rows
                      if strict.verify(stored, f"pw-{name}").reason == "ok") == sorted(names)


class TestColumnWidth:
    """The column must hold a hash before anything is written."""

    def test_sqlite_needs_no_check(self, sqlite_url: str) -> None:
        """SQLite does not enforce VARCHAR lengths, and the check says so."""
        db = Database(DatabaseConfig(url=sqlite_url))
        create_seed_table(db)
        check = check_column(db, config_for(sqlite_url, SEED_LEGACY))
        assert check.fits
        assert "SQLite does not enforce column lengths" in check.describe()

    def test_own_schema_fits(self, database: Database) -> None:
        """eximauthd_users.password_hash is VARCHAR(255)."""
        assert check_column(database, config_for(database.config.url)).fits

    def test_missing_table_and_column(self, database: Database) -> None:
        """A wrong [legacy] mapping stops before any work."""
        with pytest.raises(SchemaMissingError):
            check_column(database, config_for(database.config.url, SEED_LEGACY))
        create_seed_table(database)
        wrong = replace(SEED_LEGACY, password_column="passwd")
        with pytest.raises(ConfigError, match="no column passwd"):
            check_column(database, config_for(database.config.url, wrong))

    def test_too_narrow_column_on_mariadb(self, mariadb_url: str, tmp_path: Path) -> None:
        """VARCHAR(32): exit 2 with the exact ALTER, nothing written; --alter-column runs it."""
        db = Database(DatabaseConfig(url=mariadb_url))
        table = sa.Table(
            "users", sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("username", sa.String(64), nullable=False),
            sa.Column("domain", sa.String(255), nullable=False),
            sa.Column("password", sa.String(32, collation="utf8mb4_unicode_ci"),
                      nullable=False, server_default="", comment="it's 100% plaintext"),
            sa.Column("smtp", sa.Integer, nullable=False, server_default="1"),
        )
        table.create(db.primary)
        accounts = Accounts("seed", config_for(mariadb_url, SEED_LEGACY), db, table)
        accounts.insert({f"u{i}@example.test": f"pw-{i}" for i in range(5)})
        before = accounts.snapshot()
        alter = ("ALTER TABLE `users` MODIFY `password` VARCHAR(255) CHARACTER SET utf8mb4 "
                 "COLLATE utf8mb4_unicode_ci NOT NULL DEFAULT '' "
                 "COMMENT 'it''s 100% plaintext'")
        for extra in ([], ["--dry-run"]):
            run = run_cli(accounts, tmp_path, "migrate-passwords", *extra)
            assert run.returncode == 2, run.stderr
            assert "too narrow for the 72-character argon2id hashes" in run.stderr
            assert alter + ";" in run.stderr
            assert accounts.snapshot() == before
        run = run_cli(accounts, tmp_path, "migrate-passwords", "--dry-run", "--alter-column")
        assert run.returncode == 0, run.stderr
        assert f"would run {alter}" in run.stdout
        assert accounts.snapshot() == before
        run = run_cli(accounts, tmp_path, "migrate-passwords", "--alter-column")
        assert run.returncode == 0, run.stderr
        assert f"widened: {alter}" in run.stdout
        column = next(c for c in sa.inspect(db.primary).get_columns("users")
                      if c["name"] == "password")
        assert (column["type"].length, column["type"].collation) == (255, "utf8mb4_unicode_ci")
        assert (column["nullable"], column["default"]) == (False, "''")
        assert column["comment"] == "it's 100% plaintext"
        strict = Hasher(STRICT)
        assert all(strict.verify(stored, f"pw-{address[1]}").reason == "ok"
                   for address, stored in accounts.snapshot().items())
        db.dispose()

    def test_api_raises_column_too_narrow(self, mariadb_url: str) -> None:
        """The API raises ColumnTooNarrowError, an EximauthdError the CLI maps to exit 2."""
        db = Database(DatabaseConfig(url=mariadb_url))
        sa.Table("mailbox", sa.MetaData(), sa.Column("email", sa.String(320), primary_key=True),
                 sa.Column("pw", sa.String(40)), sa.Column("active", sa.String(1))
                 ).create(db.primary)
        with pytest.raises(ColumnTooNarrowError, match="MODIFY `pw` VARCHAR\\(255\\) NULL"):
            migrate_passwords(config_for(mariadb_url, ADDRESS_LEGACY), db)
        db.dispose()


class TestOutput:
    """Progress and report: useful to an operator, never a secret."""

    def test_progress_lines_when_not_a_terminal(self) -> None:
        """Plain lines, no more often than the interval."""
        now = [0.0]
        out = io.StringIO()
        progress = Progress(out, interval=10, clock=lambda: now[0])
        progress.start(1000)
        for t, done in [(1, 10), (11, 100), (12, 150), (25, 500)]:
            now[0] = t
            progress.update(done, done // 2)
        now[0] = 40
        progress.update(1000, 500, final=True)
        assert out.getvalue().splitlines() == [
            "migrate-passwords: 100/1000 rows (10%), 50 hashed, 9.1 rows/s, ETA 0:01:39",
            "migrate-passwords: 500/1000 rows (50%), 250 hashed, 20.0 rows/s, ETA 0:00:25",
            "migrate-passwords: 1000/1000 rows (100%), 500 hashed, 25.0 rows/s",
        ]

    def test_dry_run_progress_says_to_hash(self) -> None:
        """A dry run hashes nothing and must not say it did."""
        out = io.StringIO()
        progress = Progress(out, clock=lambda: 2.0)
        progress.start(10, dry_run=True)
        progress.update(10, 4, final=True)
        assert out.getvalue() == "migrate-passwords: 10/10 rows (100%), 4 to hash, 0.0 rows/s\n"

    def test_progress_rewrites_one_line_on_a_terminal(self) -> None:
        """\\r and padding on a tty, a newline at the end."""
        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True
        now = [0.0]
        out = Tty()
        progress = Progress(out, clock=lambda: now[0])
        progress.start(None)
        now[0] = 1.0
        progress.update(12345, 10)
        now[0] = 2.0
        progress.update(12346, 11, final=True)
        assert out.getvalue() == (
            "\rmigrate-passwords: 12345 rows, 10 hashed, 12345.0 rows/s"
            "\rmigrate-passwords: 12346 rows, 11 hashed, 6173.0 rows/s \n")  # padded over

    def test_no_secret_in_report_logs_or_reprs(self, accounts: Accounts, hasher: Hasher,
                                               caplog: pytest.LogCaptureFixture) -> None:
        """Neither a plaintext nor a hash appears in any text the run produces."""
        every_kind(accounts, hasher)
        caplog.set_level(logging.DEBUG)
        report = migrate(accounts, batch_size=2)
        text = "\n".join([*report.summary(), *report.warnings(), repr(report), caplog.text])
        for _, password in PLAINTEXT.values():
            assert password not in text
        assert "$argon2" not in text
        assert "empty@example.test" in "\n".join(report.warnings())
        assert "hunter2" not in repr(Candidate(("k",), "a@example.test", "hunter2"))


def run_cli(accounts: Accounts, cwd: Path, *args: str, stdin: str = "",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eximauthd", *args], capture_output=True,
                          text=True, env=accounts.env() | (env or {}), cwd=cwd, timeout=120,
                          check=False, input=stdin)


def test_cli_report(accounts: Accounts, hasher: Hasher, tmp_path: Path) -> None:
    """The command prints the report, warns on stderr and exits 0."""
    every_kind(accounts, hasher)
    run = run_cli(accounts, tmp_path, "migrate-passwords", "--jobs", "2", "--batch-size", "5")
    assert run.returncode == 0, run.stderr
    assert f"migrated to argon2id{len(PLAINTEXT):>17}" in run.stdout
    assert "eximauthd: WARNING: " in run.stderr
    assert "empty@example.test" in run.stderr
    for _, password in PLAINTEXT.values():
        assert password not in run.stdout + run.stderr
    assert "$argon2" not in run.stdout + run.stderr


# --- kill -9 ------------------------------------------------------------------------------------

KILL_ROWS = 8000
KILLS = 20
# Runs alive at once: while one is killed the next is already past its start-up, so the loop
# spends its time killing migrations, not waiting for Python to import.  Racing runs also
# exercise the compare-and-swap against each other.
OVERLAP = 3


def _invariant(accounts: Accounts, original: dict[str, str], verified: set[str]) -> int:
    """Every row holds its old value or a valid argon2id hash of it; returns hashed rows."""
    hasher = Hasher(STRICT)
    hashed = 0
    for address, stored in accounts.snapshot().items():
        if stored == original[address]:
            continue
        hashed += 1
        if address not in verified:
            assert hasher.verify(stored, original[address]).reason == "ok", address
            verified.add(address)
    return hashed


def _gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def test_kill_9_at_random_points_then_rerun(database: Database, tmp_path: Path) -> None:
    """SIGKILL at 20+ random points never leaves a bad row; a rerun finishes the job."""
    accounts = Accounts("seed", config_for(database.config.url, SEED_LEGACY), database,
                        create_seed_table(database))
    original = {f"user{i:05d}@example.test": f"pw-{i}-ü" + " " * (i % 3)
                for i in range(KILL_ROWS)}
    accounts.insert(dict(original))
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    command = [sys.executable, "-m", "eximauthd", "migrate-passwords", "--batch-size", "25",
               "--jobs", "1"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=accounts.env(), cwd=tmp_path,
                                start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    verified: set[str] = set()
    alive = [start() for _ in range(OVERLAP - 1)]
    killed: list[int] = []
    progress = [0]
    try:
        for _ in range(3 * KILLS):
            alive.append(start())
            victim = alive.pop(0)
            _kill_somewhere(victim, accounts, progress[-1], rng)
            code = victim.wait()
            progress.append(_invariant(accounts, original, verified))
            if code == -signal.SIGKILL:
                killed.append(victim.pid)
            else:  # it finished its pass before the kill came
                assert code == 0, f"{code=} ({seed=})"
            if progress[-1] == KILL_ROWS:  # all done already: start over, the machine is fast
                _reset(accounts, original)
                verified.clear()
                progress.append(0)
            if len(killed) == KILLS:
                break
    finally:
        for proc in alive:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Only the parents were killed, as `kill -9 PID` does: their workers must follow.
    deadline = time.monotonic() + 10
    while not all(_gone(group) for group in killed) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(_gone(group) for group in killed), "a worker outlived its killed parent"
    assert len(killed) == KILLS, f"too few runs were still running when killed ({seed=})"
    mid_run = sum(0 < n < KILL_ROWS for n in progress[1:])
    assert mid_run >= KILLS // 2, f"too few kills landed mid-migration ({seed=})"
    run = run_cli(accounts, tmp_path, "migrate-passwords")
    assert run.returncode == 0, run.stderr
    assert _invariant(accounts, original, verified) == KILL_ROWS
    store = make_account_store(accounts.config, accounts.db)
    authn = Authenticator(store, Hasher(STRICT))
    for address in list(original)[::97]:
        assert authn.verify(address, original[address]).reason == "ok"


def _reset(accounts: Accounts, original: dict[str, str]) -> None:
    """Put every original plaintext back (as if it had never been migrated)."""
    table = accounts.table
    query = (sa.update(table).where(table.c.username == sa.bindparam("local"))
             .values(password=sa.bindparam("plain")))
    with accounts.db.primary.begin() as conn:
        conn.execute(query, [{"local": address.split("@")[0], "plain": plain}
                             for address, plain in original.items()])


def _kill_somewhere(proc: subprocess.Popen[bytes], accounts: Accounts, hashed: int,
                    rng: random.Random) -> None:
    """SIGKILL the run at a random time, or once a random number of rows more are hashed."""
    if rng.random() < 0.25:
        time.sleep(rng.uniform(0.0, 0.5))  # start-up included
    else:
        target = hashed + rng.randint(1, 40)
        deadline = time.monotonic() + 20
        while accounts.count_argon2id() < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.02))
    # The parent only, as `kill -9 PID` would.
    os.kill(proc.pid, signal.SIGKILL)
