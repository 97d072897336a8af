"""Private files: the SQLite database is born 0600, exposed secrets are reported."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from eximauthd.auth.throttle import load_secret
from eximauthd.db import upgrade
from eximauthd.db.engine import Database
from eximauthd.files import create_private, warn_if_readable_by_others
from eximauthd.settings import DatabaseConfig

from .support import FAST_HASHING_ENV


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The process umask at 022 (Debian's default) for the test, restored after."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_sqlite_database_and_its_wal_and_shm_are_0600(tmp_path: Path,
                                                      loose_umask: None) -> None:
    """Under umask 022 the schema upgrade creates the file and its journals 0600."""
    path = tmp_path / "eximauthd.sqlite3"
    db = Database(DatabaseConfig(url=f"sqlite:///{path}"))
    try:
        upgrade.upgrade(db)
        with db.primary.connect() as conn:  # an open connection keeps -wal and -shm
            conn.execute(sa.text("SELECT 1"))
            names = sorted(p.name for p in tmp_path.iterdir())
            assert names == ["eximauthd.sqlite3", "eximauthd.sqlite3-shm",
                             "eximauthd.sqlite3-wal"]
            assert {p.name: _mode(p) for p in tmp_path.iterdir()} == dict.fromkeys(names, 0o600)
    finally:
        db.dispose()


def test_cli_creates_the_database_0600_even_with_umask_000(tmp_path: Path) -> None:
    """The first command to touch the file (here `db upgrade`) creates it private."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    run = subprocess.run([sys.executable, "-m", "eximauthd", "db", "upgrade"],
                         env=env | FAST_HASHING_ENV, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False, umask=0)
    assert run.returncode == 0, run.stderr
    assert _mode(tmp_path / "eximauthd.sqlite3") == 0o600
    # Nothing but the line saying this is the built-in default database (tests/cli covers it).
    assert run.stderr.startswith("eximauthd: notice: using the built-in default configuration")
    assert run.stderr.count("\n") == 1


def test_existing_world_readable_database_is_reported_not_changed(tmp_path: Path) -> None:
    """A 0644 database: one warning naming the path and the chmod; the mode is the admin's."""
    path = tmp_path / "eximauthd.sqlite3"
    path.touch(mode=0o644)
    path.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    run = subprocess.run([sys.executable, "-m", "eximauthd", "db", "upgrade"],
                         env=env | FAST_HASHING_ENV, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert "eximauthd.sqlite3 holds the SQLite database" in warnings[0]
    assert "(mode 0644)" in warnings[0]
    assert "chmod 600 eximauthd.sqlite3 eximauthd.sqlite3-wal eximauthd.sqlite3-shm" \
        in warnings[0]
    assert _mode(path) == 0o644


def test_uncreatable_database_is_a_storage_error(tmp_path: Path) -> None:
    """A missing directory: one `eximauthd: error:` line, exit 3, nothing created."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    url = f"sqlite:///{tmp_path}/missing/db.sqlite3"
    run = subprocess.run([sys.executable, "-m", "eximauthd", "user", "list"],
                         env=env | {"EXIMAUTHD_DATABASE_URL": url}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 3
    assert run.stderr.startswith("eximauthd: error: cannot open or create the SQLite file ")
    assert run.stderr.count("\n") == 1


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o640, False), (0o644, True),
                                              (0o604, True)])
def test_throttle_key_readable_by_others_is_reported(tmp_path: Path, mode: int, warned: bool,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """load_secret warns once, with the path, when others can read the key; it still loads."""
    key = tmp_path / f"throttle-{mode:o}.key"
    key.write_bytes(os.urandom(32).hex().encode())
    key.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="eximauthd.files"):
        assert len(load_secret(str(key))) == 64
        load_secret(str(key))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == (1 if warned else 0)
    if warned:
        assert f"{key} holds the throttle key" in messages[0]
        assert f"chmod o-rwx {key}" in messages[0]
        assert key.read_bytes().decode() not in messages[0]


def test_config_readable_by_others_is_reported(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """What `serve` checks for its configuration file: others' read bit, nothing else."""
    config = tmp_path / "eximauthd.toml"
    config.write_text('[database]\nurl = "mysql+pymysql://u:secret@127.0.0.1/mail"\n')
    with caplog.at_level(logging.WARNING, logger="eximauthd.files"):
        config.chmod(0o640)
        warn_if_readable_by_others(str(config), "the configuration")
        assert caplog.records == []
        config.chmod(0o644)
        warn_if_readable_by_others(str(config), "the configuration")
    assert [r.getMessage() for r in caplog.records] == [
        f"{config} holds the configuration and is readable by every local user (mode 0644): "
        f"chmod o-rwx {config}"]


def test_create_private_leaves_an_existing_file_alone(tmp_path: Path) -> None:
    """Content and mode of an existing file survive; a new one is empty and 0600."""
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    old.write_bytes(b"data")
    old.chmod(0o640)
    create_private(str(new))
    create_private(str(old))
    assert (new.read_bytes(), _mode(new)) == (b"", 0o600)
    assert (old.read_bytes(), _mode(old)) == (b"data", 0o640)
