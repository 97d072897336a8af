"""``eximauthd doctor`` without --smtp: a configured, running service passes; a stopped one
FAILs on PING; the database checks name the fix.  Run as a subprocess, as an admin would."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from eximauthd.db import upgrade
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig

from .. import servicekit as kit
from ..support import ALICE, PASSWORD, SEED_LEGACY, populate

LINE = re.compile(r"(ok  |warn|FAIL) \S.*")


def doctor(env: dict[str, str], *args: str, stdin: str = "",
           cwd: Path | None = None) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    run = subprocess.run([sys.executable, "-m", "eximauthd", "doctor", *args], input=stdin,
                         env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
                         check=False)
    assert "Traceback" not in run.stderr
    lines = run.stdout.splitlines()
    assert all(LINE.fullmatch(line) for line in lines), run.stdout
    return lines, run


def statuses(lines: list[str], fragment: str) -> list[str]:
    return [line[:4].strip() for line in lines if fragment in line]


@pytest.fixture
def workdir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="eadoc-", dir="/tmp"))
    (base / "exim.conf").write_text("primary_hostname = mx.example.test\n")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_running_service_is_all_ok_and_stopped_service_fails_on_ping(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/accounts.sqlite3"
    populate(url)
    served = kit.start_service(url)
    args = ("--exim-config", str(workdir / "exim.conf"), "--user", ALICE)
    try:
        lines, run = doctor(served.env, *args, stdin=PASSWORD + "\n")
        assert run.returncode == 0, run.stdout
        assert [line for line in lines if not line.startswith("ok ")] == []
        assert statuses(lines, "PING on") == ["ok"]
        assert statuses(lines, f"AUTH PLAIN {ALICE} on the socket: yes") == ["ok"]
        assert statuses(lines, "/healthz answers") == ["ok"]
        assert statuses(lines, "schema at revision") == ["ok"]
        wrong, run = doctor(served.env, *args, stdin="wrong\n")
        assert run.returncode == 1
        assert statuses(wrong, "on the socket") == ["FAIL"]
    finally:
        served.stop()
    lines, run = doctor(served.env, *args, stdin=PASSWORD + "\n")
    assert run.returncode == 1
    assert run.stderr == ""
    ping = [line for line in lines if "PING on" in line]
    assert len(ping) == 1
    assert ping[0].startswith("FAIL ")
    assert "(fix: start the service" in ping[0]
    assert statuses(lines, "free for the service") == ["ok"]
    assert statuses(lines, "on the socket") == []  # nothing to ask: one FAIL, not a cascade
    shutil.rmtree(Path(served.socket_path).parent, ignore_errors=True)


def test_postfix_policy_socket_must_answer_when_enabled(workdir: Path) -> None:
    """Enabled, the policy socket is asked as Postfix asks it: ok when it answers DUNNO to
    an anonymous request, FAIL (Postfix would answer 451 4.3.5) when nothing answers there;
    disabled, nothing is said."""
    url = f"sqlite:///{workdir}/accounts.sqlite3"
    populate(url)
    path = str(workdir / "policy.sock")
    args = ("--exim-config", str(workdir / "exim.conf"))
    with kit.running(url, extra_env=kit.policy_env(path)) as served:
        lines, run = doctor(served.env, *args)
        assert run.returncode == 0, run.stdout
        assert statuses(lines, f"Postfix policy on {path}: answers") == ["ok"]
        elsewhere = served.env | {"EXIMAUTHD_POSTFIX_POLICY_PATH": str(workdir / "none.sock")}
        lines, run = doctor(elsewhere, *args)
        assert run.returncode == 1
        [failed] = [line for line in lines if "Postfix policy on" in line]
        assert failed.startswith("FAIL ")
        assert "451 4.3.5" in failed
        disabled = served.env | {"EXIMAUTHD_POSTFIX_POLICY_ENABLED": "false"}
        lines, _ = doctor(disabled, *args)
        assert statuses(lines, "Postfix policy") == []


@pytest.mark.parametrize(("setup", "expected"), [
    ("missing-file", "the SQLite file does not exist (fix: eximauthd db upgrade"),
    ("no-tables", "no eximauthd tables (fix: eximauthd db upgrade)"),
], ids=["missing-file", "no-tables"])
def test_database_problems_fail_with_the_fix(workdir: Path, setup: str, expected: str) -> None:
    path = workdir / "accounts.sqlite3"
    if setup == "no-tables":
        path.touch()  # an empty SQLite database
    env = {"PATH": "/usr/bin:/bin", "EXIMAUTHD_DATABASE_URL": f"sqlite:///{path}",
           "EXIMAUTHD_HTTP_LISTEN": f"127.0.0.1:{kit.free_port()}"}
    lines, run = doctor(env, "--exim-config", str(workdir / "exim.conf"), cwd=workdir)
    assert run.returncode == 1
    assert [line for line in lines if line.startswith("FAIL") and "database" in line] \
        == [next(line for line in lines if expected in line)]
    assert path.exists() is (setup == "no-tables")  # the doctor never creates the file


@pytest.mark.mariadb
@pytest.mark.parametrize(("width", "enabled", "status", "says"), [
    (40, "smtp", "FAIL", "VARCHAR(40) is too narrow for the"),
    (255, "smtp", "ok", "VARCHAR(255) holds the"),
    (255, "active", "FAIL", "no column active"),
], ids=["narrow", "wide", "no-enabled-column"])
def test_legacy_password_column_width_is_checked(mariadb_url: str, workdir: Path, width: int,
                                                 enabled: str, status: str, says: str) -> None:
    """The seed's users table, its password column as wide as *width*: an argon2id PHC
    string (about 97 characters) does not fit in 40."""
    db = Database(DatabaseConfig(url=mariadb_url))
    upgrade.upgrade(db)
    sa.Table("users", sa.MetaData(),
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("username", sa.String(64), nullable=False),
             sa.Column("domain", sa.String(255), nullable=False),
             sa.Column("password", sa.String(width), nullable=True),
             sa.Column("smtp", sa.Integer, nullable=False, server_default="1"),
             ).create(db.primary)
    db.dispose()
    config = workdir / "eximauthd.toml"
    config.write_text(
        f'[database]\nurl = "{mariadb_url}"\n[legacy]\ntable = "{SEED_LEGACY.table}"\n'
        f'local_part_column = "{SEED_LEGACY.local_part_column}"\n'
        f'domain_column = "{SEED_LEGACY.domain_column}"\n'
        f'password_column = "{SEED_LEGACY.password_column}"\n'
        f'enabled_column = "{enabled}"\nenabled_when = "> 0"\n'
        f'[http]\nlisten = "127.0.0.1:{kit.free_port()}"\n')
    env = {"PATH": "/usr/bin:/bin", "EXIMAUTHD_CONFIG": str(config)}
    lines, run = doctor(env, "--exim-config", str(workdir / "exim.conf"), cwd=workdir)
    legacy = [line for line in lines
              if "legacy table users" in line and "login lookup" not in line]
    assert len(legacy) == 1, run.stdout
    assert legacy[0].startswith(status)
    assert says in legacy[0]
    assert ("ALTER TABLE `users` MODIFY `password`" in legacy[0]) is (width == 40)


@pytest.mark.mariadb
@pytest.mark.parametrize("indexed", [False, True], ids=["no-index", "index"])
def test_legacy_table_without_a_login_index_is_a_warning_with_the_statement(
        mariadb_url: str, workdir: Path, indexed: bool) -> None:
    """A full scan per AUTH is a warning (logins stay correct) that names the fix; an index on
    (username, domain) is ok."""
    db = Database(DatabaseConfig(url=mariadb_url))
    upgrade.upgrade(db)
    users = sa.Table("users", sa.MetaData(),
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                     sa.Column("username", sa.String(64), nullable=False),
                     sa.Column("domain", sa.String(255), nullable=False),
                     sa.Column("password", sa.String(255), nullable=True),
                     sa.Column("smtp", sa.Integer, nullable=False, server_default="1"))
    if indexed:
        sa.Index("users_login", users.c.username, users.c.domain)
    users.create(db.primary)
    db.dispose()
    config = workdir / "eximauthd.toml"
    config.write_text(
        f'[database]\nurl = "{mariadb_url}"\n[legacy]\ntable = "{SEED_LEGACY.table}"\n'
        f'local_part_column = "{SEED_LEGACY.local_part_column}"\n'
        f'domain_column = "{SEED_LEGACY.domain_column}"\n'
        f'password_column = "{SEED_LEGACY.password_column}"\n'
        f'[http]\nlisten = "127.0.0.1:{kit.free_port()}"\n')
    env = {"PATH": "/usr/bin:/bin", "EXIMAUTHD_CONFIG": str(config)}
    lines, run = doctor(env, "--exim-config", str(workdir / "exim.conf"), cwd=workdir)
    index = [line for line in lines if "login lookup" in line]
    assert len(index) == 1, run.stdout
    if indexed:
        assert index[0].startswith("ok "), index
        assert "users_login" in index[0]
    else:
        assert index[0].startswith("warn "), index
        assert "eximauthd db index-legacy --apply" in index[0]
        assert "CREATE INDEX" in index[0]


@pytest.mark.parametrize(("mode", "group_owned", "status"), [
    (0o750, False, "FAIL"),
    (0o700, True, "FAIL"),
    (0o750, True, "ok"),
    (0o751, False, "ok"),
], ids=["0750-other-group", "0700-socket-group", "0750-socket-group", "0751"])
def test_socket_group_must_be_able_to_search_the_socket_directory(
        workdir: Path, mode: int, group_owned: bool, status: str) -> None:
    """Exim reaches the socket as a member of socket.group: the directory must let it pass."""
    group = "Debian-exim"
    directory = workdir / "run"
    directory.mkdir()
    if group_owned:
        shutil.chown(directory, group=group)
    directory.chmod(mode)
    env = {"PATH": "/usr/bin:/bin", "EXIMAUTHD_SOCKET_PATH": str(directory / "e.sock"),
           "EXIMAUTHD_SOCKET_GROUP": group,
           "EXIMAUTHD_DATABASE_URL": f"sqlite:///{workdir}/absent.sqlite3",
           "EXIMAUTHD_HTTP_LISTEN": f"127.0.0.1:{kit.free_port()}"}
    lines, _ = doctor(env, "--exim-config", str(workdir / "exim.conf"), cwd=workdir)
    assert statuses(lines, f"socket directory {directory}") == [status]
    assert (f"group {group} cannot reach the socket" in "".join(lines)) is (status == "FAIL")


@pytest.mark.parametrize(("args", "stdin", "error"), [
    (("--user", ALICE), "", "--user: empty password refused"),
    (("--user", ALICE), "pw\nmore\n", "--user: more than one line on standard input"),
    (("--smtp", "localhost"), "", "--smtp: expected HOST:PORT, got 'localhost'"),
], ids=["empty-password", "two-lines", "smtp-without-port"])
def test_bad_usage_is_one_error_line_and_exit_2(workdir: Path, args: tuple[str, ...],
                                                stdin: str, error: str) -> None:
    lines, run = doctor({"PATH": "/usr/bin:/bin"}, *args, stdin=stdin, cwd=workdir)
    assert run.returncode == 2
    assert lines == []
    [line] = run.stderr.splitlines()
    assert line.startswith(f"eximauthd: error: {error}")
