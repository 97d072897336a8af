"""``eximauthd db index-legacy`` read with an attacker's eye: the [legacy] names reach DDL, and
the DDL runs on a connection of its own, which must log in as the service's does."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from eximauthd.db.engine import Database
from eximauthd.db.legacyindex import check_legacy_index
from eximauthd.settings import DatabaseConfig

from ..support import (
    FAST_HASHING_ENV,
    MARIADB_HOST,
    MARIADB_PORT,
    SEED_LEGACY,
    Run,
    create_seed_table,
)

KEYS = {"table": "users", "local_part_column": "username", "domain_column": "domain"}
HOSTILE = {
    "statement-after": "users; DROP TABLE victim",
    "backtick": "users`; DROP TABLE victim; -- ",
    "double-quote": 'users"; DROP TABLE victim; --',
    "single-quote": "users'; DROP TABLE victim; --",
    "newline": "users\nDROP TABLE victim",
    "trailing-newline": "users\n",
    "accented": "us\u00e9rs",
    "fullwidth": "\uff55sers",
    "kelvin-sign": "\u212aey",  # lower() is "k": must not match a column "key"
    "too-long": "u" * 65,
}


@pytest.fixture
def seeded(db_url: str) -> Iterator[Database]:
    db = Database(DatabaseConfig(url=db_url))
    create_seed_table(db)
    with db.primary.begin() as conn:
        conn.execute(sa.text("CREATE TABLE victim (id INTEGER)"))
    yield db
    db.dispose()


def _cli(tmp_path: Path, url: str, *args: str, extra: str = "",
         legacy: dict[str, str] | None = None) -> Run:
    names = {**KEYS, **(legacy or {})}
    lines = "".join(f"{key} = {_toml(value)}\n" for key, value in names.items())
    config = tmp_path / "eximauthd.toml"
    config.write_text(f'[database]\nurl = "{url}"\n{extra}[legacy]\n{lines}'
                      'password_column = "password"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    proc = subprocess.run([sys.executable, "-m", "eximauthd", "--config", str(config), *args],
                          capture_output=True, text=True, env=env | FAST_HASHING_ENV,
                          cwd=tmp_path, timeout=120, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def _toml(value: str) -> str:
    return '"' + "".join(f"\\u{ord(c):04x}" if not c.isascii() or not c.isprintable()
                         or c in '"\\' else c for c in value) + '"'


# Each name in one of the keys in turn (every key is validated alike; a run each is enough).
CASES = [(sorted(KEYS)[i % len(KEYS)], name) for i, name in enumerate(HOSTILE.values())]


@pytest.mark.parametrize(("key", "name"), CASES, ids=HOSTILE.keys())
def test_a_crafted_legacy_name_is_refused_before_any_sql(seeded: Database, tmp_path: Path,
                                                        key: str, name: str) -> None:
    run = _cli(tmp_path, seeded.config.url, "db", "index-legacy", "--apply",
               legacy={key: name})
    assert run.code == 2, run.out + run.err
    assert run.err.startswith(f"eximauthd: error: legacy.{key}: "), run.err
    assert run.err.endswith("is not a plain SQL identifier\n"), run.err
    assert len(run.err.splitlines()) == 1
    assert sa.inspect(seeded.primary).has_table("victim")
    assert not check_legacy_index(seeded, SEED_LEGACY).indexed


@pytest.mark.mariadb
def test_apply_logs_in_with_a_password_file_beyond_latin1(mariadb_url: str,
                                                          mariadb_admin: sa.Engine,
                                                          tmp_path: Path) -> None:
    """The DDL connection sends password_file's password as UTF-8, as the service's does."""
    db = Database(DatabaseConfig(url=mariadb_url))
    create_seed_table(db)
    db.dispose()
    name = sa.engine.make_url(mariadb_url).database
    user, password = f"eaidx{secrets.token_hex(4)}", "pässwörd-€-" + secrets.token_hex(4)
    with mariadb_admin.begin() as conn:
        conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY :pw"), {"pw": password})
        conn.execute(sa.text(f"GRANT ALL ON `{name}`.* TO '{user}'@'%'"))
    try:
        secret = tmp_path / "db.password"
        secret.write_text(password + "\n", encoding="utf-8")
        secret.chmod(0o600)
        url = f"mysql+pymysql://{user}@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
        run = _cli(tmp_path, url, "db", "index-legacy", "--apply",
                   extra=f'password_file = "{secret}"\n')
        assert run.code == 0, run.err
        assert run.out.startswith("created: CREATE INDEX"), run.out
        assert password not in run.out + run.err
    finally:
        with mariadb_admin.begin() as conn:
            conn.execute(sa.text(f"DROP USER '{user}'@'%'"))
