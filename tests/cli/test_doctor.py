"""``eximauthd doctor`` without --smtp: a configured, running service passes; a stopped one
FAILs on PING; the database checks name the fix.  Run as a subprocess, as an admin would."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from eximauthd.cli.doctor import _dovecot_greeting_problem
from eximauthd.db import upgrade
from eximauthd.db.engine import Database
from eximauthd.exim.install import SNIPPETS_DIR
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


def test_a_version_table_with_several_revisions_is_a_schema_failure_not_unreachable(
        workdir: Path) -> None:
    """The database answers: the doctor must not send the admin to check the URL or the
    server, but to the version table."""
    path = workdir / "accounts.sqlite3"
    db = Database(DatabaseConfig(url=f"sqlite:///{path}"))
    try:
        upgrade.upgrade(db)
        with db.primary.begin() as conn:
            conn.execute(sa.insert(sa.table(upgrade.VERSION_TABLE, sa.column("version_num")))
                         .values(version_num="0003"))
    finally:
        db.dispose()
    env = {"PATH": "/usr/bin:/bin", "EXIMAUTHD_DATABASE_URL": f"sqlite:///{path}",
           "EXIMAUTHD_HTTP_LISTEN": f"127.0.0.1:{kit.free_port()}"}
    lines, run = doctor(env, "--exim-config", str(workdir / "exim.conf"), cwd=workdir)
    assert run.returncode == 1
    [failed] = [line for line in lines if line.startswith("FAIL") and "database" in line]
    assert ": schema: " in failed
    assert "records 2 schema revisions ('0003', '0004')" in failed
    assert "unreachable" not in failed
    assert "server runs" not in failed


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


# --- [dovecot_auth]: the socket, a live handshake and AUTH, and Exim's dovecot driver --------

def test_dovecot_front_end_handshakes_and_authenticates_and_a_stopped_one_fails_once(
        workdir: Path) -> None:
    url = f"sqlite:///{workdir}/accounts.sqlite3"
    populate(url)
    sock_dir = workdir / "run"
    sock_dir.mkdir()
    sock_dir.chmod(0o755)
    dovecot_path = str(sock_dir / "dovecot-auth.sock")
    listen = f"127.0.0.1:{kit.free_port()}"
    served = kit.start_service(url, extra_env=kit.dovecot_env(dovecot_path, listen)
                               | {"EXIMAUTHD_DOVECOT_AUTH_MODE": "0660"})
    args = ("--exim-config", str(workdir / "exim.conf"), "--user", ALICE)
    try:
        lines, run = doctor(served.env, *args, stdin=PASSWORD + "\n")
        assert run.returncode == 0, run.stdout
        assert [line for line in lines if not line.startswith("ok ")] == []
        assert statuses(lines, f"Dovecot auth socket {dovecot_path}: mode 0660") == ["ok"]
        for where in (dovecot_path, f"tcp:{listen}"):
            assert statuses(lines, f"Dovecot handshake on {where}: VERSION 1, MECH PLAIN "
                                   "LOGIN before SPID, DONE") == ["ok"]
        assert statuses(lines, f"AUTH PLAIN {ALICE} on the Dovecot socket: OK user={ALICE}") \
            == ["ok"]
        wrong, run = doctor(served.env, *args, stdin="wrong\n")
        assert run.returncode == 1
        assert [line for line in wrong if "on the Dovecot socket" in line] == [
            f"FAIL AUTH PLAIN {ALICE} on the Dovecot socket: answered 'FAIL 1' (fix: eximauthd "
            f"check {ALICE} tells why; the service log too)"]
    finally:
        served.stop()
    lines, run = doctor(served.env, *args, stdin=PASSWORD + "\n")
    assert run.returncode == 1
    assert [line[:4] for line in lines if line.startswith("FAIL")] == ["FAIL"]  # PING's
    assert statuses(lines, "Dovecot handshake") == []  # one FAIL, not a cascade
    assert statuses(lines, "on the Dovecot socket") == []


def test_dovecot_front_end_not_answering_while_the_service_runs_fails_the_handshake(
        workdir: Path) -> None:
    """[dovecot_auth] enabled in the doctor's view, but the running service was started
    without it (not restarted after the change): the handshake FAILs with the fix."""
    url = f"sqlite:///{workdir}/accounts.sqlite3"
    populate(url)
    served = kit.start_service(url)
    dovecot_path = str(workdir / "dovecot-auth.sock")
    try:
        lines, run = doctor(served.env | kit.dovecot_env(dovecot_path), "--exim-config",
                            str(workdir / "exim.conf"), "--user", ALICE, stdin=PASSWORD + "\n")
    finally:
        served.stop()
        shutil.rmtree(Path(served.socket_path).parent, ignore_errors=True)
    assert run.returncode == 1
    assert [line for line in lines if line.startswith("FAIL")] == [
        f"FAIL Dovecot handshake on {dovecot_path}: no answer: No such file or directory (fix: "
        "restart the service (systemctl restart eximauthd): it opens the Dovecot socket at "
        "start when enabled)"]
    assert statuses(lines, "on the Dovecot socket") == []
    shutil.rmtree(Path(served.socket_path).parent, ignore_errors=True)


@pytest.mark.parametrize(("greeting", "problem"), [
    (["VERSION\t1\t2", "MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext", "SPID\t1",
      "CUID\t1", "DONE"], None),
    (["VERSION\t1\t2", "SPID\t1", "MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext",
      "DONE"], "no MECH PLAIN LOGIN before SPID"),
    (["VERSION\t1\t2", "MECH\tPLAIN\tplaintext", "SPID\t1", "DONE"], "no MECH LOGIN before"),
    (["VERSION\t2\t0", "MECH\tPLAIN", "MECH\tLOGIN", "SPID\t1", "DONE"], "is not VERSION 1"),
    (["VERSION\t1\t2", "MECH\tPLAIN", "MECH\tLOGIN", "SPID\t1"], "no DONE line"),
    (["VERSION\t1\t2", "MECH\tPLAIN", "MECH\tLOGIN", "DONE"], "no SPID line"),
    (["yes"], "is not VERSION 1"),
    ([], "said nothing"),
], ids=["dovecot", "mech-after-spid", "no-login", "version-2", "no-done", "no-spid",
        "readsocket-socket", "silent"])
def test_dovecot_greeting_is_read_as_exim_and_postfix_read_it(greeting: list[str],
                                                              problem: str | None) -> None:
    found = _dovecot_greeting_problem(greeting)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_dovecot_socket_with_the_wrong_mode_fails_with_the_fix(workdir: Path) -> None:
    path = workdir / "dovecot-auth.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    path.chmod(0o666)
    env = {"PATH": "/usr/bin:/bin", "EXIMAUTHD_DATABASE_URL": f"sqlite:///{workdir}/a.sqlite3",
           "EXIMAUTHD_HTTP_LISTEN": f"127.0.0.1:{kit.free_port()}"} | kit.dovecot_env(str(path))
    try:
        lines, _ = doctor(env, "--exim-config", str(workdir / "exim.conf"), cwd=workdir)
    finally:
        listener.close()
    assert [line for line in lines if f"Dovecot auth socket {path}" in line] == [
        f"FAIL Dovecot auth socket {path}: mode 0666, configured 0660 (fix: restart the service "
        "(it sets both at start))"]


@pytest.mark.parametrize(("enabled", "exim_socket", "status", "says"), [
    (True, "{path}", "ok", "server_socket is [dovecot_auth] path"),
    (True, "/run/other/dovecot-auth.sock", "FAIL",
     "server_socket is /run/other/dovecot-auth.sock, [dovecot_auth] path is {path} (fix: "
     "EXIMAUTHD_DOVECOT_SOCKET = {path} in Exim's main section"),
    (False, "{path}", "FAIL", "asks {path} but [dovecot_auth] is disabled (fix: set "
     "[dovecot_auth] enabled = true, path = {path}"),
], ids=["same", "mismatch", "disabled"])
def test_exim_dovecot_driver_must_ask_the_dovecot_auth_socket(
        workdir: Path, enabled: bool, exim_socket: str, status: str, says: str) -> None:
    """The shipped dovecot snippet with EXIMAUTHD_DOVECOT_SOCKET set as an admin would."""
    path = str(workdir / "dovecot-auth.sock")
    snippets = SNIPPETS_DIR
    (workdir / "exim.conf").write_text(
        f"EXIMAUTHD_DOVECOT_SOCKET = {exim_socket.format(path=path)}\n"
        "EXIMAUTHD_ADVERTISE = ${if def:tls_in_cipher}\nbegin authenticators\n"
        f".include {snippets}/eximauthd-dovecot-auth.conf\n")
    env = {"PATH": "/usr/bin:/bin", "EXIMAUTHD_DATABASE_URL": f"sqlite:///{workdir}/a.sqlite3",
           "EXIMAUTHD_HTTP_LISTEN": f"127.0.0.1:{kit.free_port()}"}
    env |= kit.dovecot_env(path) if enabled else {"EXIMAUTHD_DOVECOT_AUTH_PATH": path}
    lines, _ = doctor(env, "--exim-config", str(workdir / "exim.conf"), cwd=workdir)
    driver = [line for line in lines if "(driver = dovecot)" in line]
    assert [line[:4].strip() for line in driver] == [status, status]
    assert [line.split(" at ")[0] for line in driver] == [
        f"{status:<4} Exim authenticator eximauthd_{m} (driver = dovecot)"
        for m in ("plain", "login")]
    assert all(says.format(path=path) in line for line in driver), driver
    assert statuses(lines, "no relay mistake found") == ["ok"]  # the snippet lints clean

