"""``eximauthd db index-legacy`` and the unindexed-table warning of ``migrate-passwords``,
run as real subprocesses on the seed's ``users`` table (SQLite and MariaDB)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from eximauthd.db.engine import Database
from eximauthd.db.legacyindex import check_legacy_index
from eximauthd.settings import DatabaseConfig

from ..support import FAST_HASHING_ENV, SEED_LEGACY, Run, create_seed_table

UNINDEXED = "no index serves the login lookup"


@pytest.fixture
def seeded(db_url: str) -> Iterator[Database]:
    """The seed's users table, one plaintext row, no index on the login columns."""
    db = Database(DatabaseConfig(url=db_url))
    table = create_seed_table(db)
    with db.primary.begin() as conn:
        conn.execute(sa.insert(table).values(username="legacy", domain="example.test",
                                             password="plain-old-pw", smtp=1))
    yield db
    db.dispose()


def _cli(db: Database, tmp_path: Path, *args: str, legacy: bool = True,
         local_part: str = "username") -> Run:
    config = tmp_path / "eximauthd.toml"
    text = f'[database]\nurl = "{db.config.url}"\n'
    if legacy:
        text += (f'[legacy]\ntable = "users"\nlocal_part_column = "{local_part}"\n'
                 'domain_column = "domain"\npassword_column = "password"\n'
                 'enabled_column = "smtp"\nenabled_when = "> 0"\n')
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    proc = subprocess.run([sys.executable, "-m", "eximauthd", "--config", str(config), *args],
                          capture_output=True, text=True, env=env | FAST_HASHING_ENV,
                          cwd=tmp_path, timeout=120, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def test_without_apply_prints_the_statement_and_creates_nothing(seeded: Database,
                                                                tmp_path: Path) -> None:
    """Exit 0, the problem and the exact CREATE INDEX on stdout; the table is unchanged."""
    run = _cli(seeded, tmp_path, "db", "index-legacy")
    assert run.code == 0, run.err
    statement = check_legacy_index(seeded, SEED_LEGACY).statement
    assert run.out.splitlines() == [
        run.out.splitlines()[0], f"{statement};"]
    assert UNINDEXED in run.out.splitlines()[0]
    seeded.dispose()
    assert not check_legacy_index(seeded, SEED_LEGACY).indexed


def test_apply_creates_a_usable_index_and_a_second_run_does_nothing(seeded: Database,
                                                                   tmp_path: Path) -> None:
    """--apply: "created:" and the index the lookup uses; again: "nothing to do", exit 0."""
    statement = check_legacy_index(seeded, SEED_LEGACY).statement
    first = _cli(seeded, tmp_path, "db", "index-legacy", "--apply")
    assert first.code == 0, first.err
    assert first.out.splitlines()[0] == f"created: {statement}"
    seeded.dispose()  # a pooled SQLite connection may keep the plan it made before
    assert check_legacy_index(seeded, SEED_LEGACY).usable == ("ix_users_eximauthd_login",)
    second = _cli(seeded, tmp_path, "db", "index-legacy", "--apply")
    assert second.code == 0, second.err
    assert second.out.strip().endswith(
        "the login lookup uses index ix_users_eximauthd_login: nothing to do")
    assert "created" not in second.out


def test_without_a_legacy_table_it_is_one_error_line(seeded: Database, tmp_path: Path) -> None:
    """The own schema needs no such index: exit 2, one line naming why."""
    run = _cli(seeded, tmp_path, "db", "index-legacy", legacy=False)
    assert run.code == 2
    assert run.err.startswith("eximauthd: error: db index-legacy: no [legacy] table")
    assert len(run.err.splitlines()) == 1


def test_migrate_passwords_warns_once_about_an_unindexed_table_and_not_once_indexed(
        seeded: Database, tmp_path: Path) -> None:
    """The warning (with the statement) comes before the run; none after --apply."""
    statement = check_legacy_index(seeded, SEED_LEGACY).statement
    before = _cli(seeded, tmp_path, "migrate-passwords", "--dry-run", "--jobs", "1")
    assert before.code == 0, before.err
    warnings = [line for line in before.err.splitlines() if UNINDEXED in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("eximauthd: WARNING: legacy table users")
    assert statement in warnings[0]
    assert _cli(seeded, tmp_path, "db", "index-legacy", "--apply").code == 0
    after = _cli(seeded, tmp_path, "migrate-passwords", "--dry-run", "--jobs", "1")
    assert after.code == 0, after.err
    assert UNINDEXED not in after.err


@pytest.mark.parametrize("command", [("migrate-passwords", "--dry-run"),
                                     ("db", "index-legacy")])
def test_a_missing_legacy_column_is_one_error_line(seeded: Database, tmp_path: Path,
                                                   command: tuple[str, ...]) -> None:
    """A [legacy] column the table lacks: exit 2 and exactly one line, no extra warning."""
    run = _cli(seeded, tmp_path, *command, local_part="login")
    assert run.code == 2, run.err
    assert run.err.startswith("eximauthd: error: table users has no column login")
    assert len(run.err.splitlines()) == 1
