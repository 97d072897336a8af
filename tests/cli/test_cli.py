"""The ``eximauthd`` command, run as a real subprocess against real databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig

from ..hash_shapes import SHAPED
from ..support import FAST_HASHING_ENV, Cli, InstalledWheel, Run, create_seed_table

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Tr0ub4dor&3 ünïcode"




def _runner(env: dict[str, str], cwd: Path) -> Cli:
    def run(*args: str, stdin: str = "") -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "eximauthd", *args], input=stdin, capture_output=True,
            text=True, env=env, cwd=cwd, timeout=60, check=False,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)
    return run


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    return env | FAST_HASHING_ENV


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Cli:
    """The command with its database at *db_url* (SQLite or MariaDB), schema not yet created."""
    return _runner(_base_env() | {"EXIMAUTHD_DATABASE_URL": db_url}, tmp_path)


@pytest.fixture
def legacy_cli(db_url: str, tmp_path: Path) -> Cli:
    """The command mapped onto the seed's users table through a config file."""
    db = Database(DatabaseConfig(url=db_url))
    table = create_seed_table(db)
    with db.primary.begin() as conn:
        conn.execute(sa.insert(table).values(username="legacy", domain="example.test",
                                             password="plain-old-pw", smtp=1))
    db.dispose()
    config = tmp_path / "eximauthd.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n'
        '[legacy]\ntable = "users"\nlocal_part_column = "username"\ndomain_column = "domain"\n'
        'password_column = "password"\nenabled_column = "smtp"\nenabled_when = "> 0"\n'
    )
    return _runner(_base_env() | {"EXIMAUTHD_CONFIG": str(config)}, tmp_path)


def _assert_no_secret(*runs: Run) -> None:
    for run in runs:
        assert SECRET not in run.out + run.err
        assert "$argon2" not in run.err


class TestIssueScenario:
    """`user add` then `check`: yes for the right password, no for a wrong one."""

    def test_own_schema(self, cli: Cli) -> None:
        """On SQLite and MariaDB, with eximauthd's own tables."""
        upgrade = cli("db", "upgrade")
        assert upgrade.code == 0, upgrade.err
        assert "to revision 0004" in upgrade.out
        assert cli("db", "upgrade").out.strip() == "schema already at revision 0004"
        added = cli("user", "add", "alice@example.test", "--password-stdin", stdin=SECRET + "\n")
        assert (added.code, added.out.strip()) == (0, "added alice@example.test")
        yes = cli("check", "alice@example.test", "--password-stdin", stdin=SECRET + "\n")
        assert (yes.code, yes.out.strip()) == (0, "yes ok")
        no = cli("check", "alice@example.test", "--password-stdin", stdin="wrong\n")
        assert (no.code, no.out.strip()) == (1, "no bad-password")
        _assert_no_secret(upgrade, added, yes, no)

    def test_seed_shaped_legacy_table(self, legacy_cli: Cli) -> None:
        """On the seed's users(username, domain, password, smtp) table."""
        assert legacy_cli("db", "upgrade").code == 0
        plain = legacy_cli("check", "legacy@example.test", "--password-stdin",
                           stdin="plain-old-pw\n")
        assert (plain.code, plain.out.strip()) == (0, "yes ok-rehashed")
        added = legacy_cli("user", "add", "alice@example.test", "--password-stdin",
                           stdin=SECRET + "\n")
        assert added.code == 0, added.err
        assert legacy_cli("check", "alice@example.test", "--password-stdin",
                          stdin=SECRET + "\n").code == 0
        assert legacy_cli("check", "alice@example.test", "--password-stdin",
                          stdin="wrong\n").code == 1
        listed = json.loads(legacy_cli("user", "list", "--json").out)
        assert listed == [
            {"address": "alice@example.test", "enabled": True, "scheme": "argon2id"},
            {"address": "legacy@example.test", "enabled": True, "scheme": "argon2id"},
        ]
        assert legacy_cli("user", "disable", "alice@example.test").code == 0
        assert legacy_cli("check", "alice@example.test", "--password-stdin",
                          stdin=SECRET + "\n").out.strip() == "no disabled"

    def test_hash_shaped_rows_answer_no_to_their_own_value(self, legacy_cli: Cli,
                                                          db_url: str) -> None:
        """Exim's view: a bare Django, SSHA-body or OLD_PASSWORD() row sent as the password is
        "no unknown-scheme" (exit 1), and `user list` names the kind."""
        shaped = {kind: value for kind, value in SHAPED
                  if kind in {"django", "base64-salted-digest", "mysql323-hex"}}
        db = Database(DatabaseConfig(url=db_url))
        table = sa.Table("users", sa.MetaData(), autoload_with=db.primary)
        with db.primary.begin() as conn:
            conn.execute(sa.insert(table), [
                {"username": f"u{i}", "domain": "example.test", "password": v, "smtp": 1}
                for i, v in enumerate(shaped.values())])
        db.dispose()
        for i, value in enumerate(shaped.values()):
            run = legacy_cli("check", f"u{i}@example.test", "--password-stdin",
                             stdin=value + "\n")
            assert (run.code, run.out.strip()) == (1, "no unknown-scheme"), value
            assert value not in run.out + run.err
        listed = {r["address"]: r["scheme"]
                  for r in json.loads(legacy_cli("user", "list", "--json").out)}
        for i, kind in enumerate(shaped):
            assert listed[f"u{i}@example.test"] == f"unknown ({kind}?)"


class TestAccountCommands:
    """passwd, disable/enable, list, delete, grants, hash."""

    def test_account_lifecycle(self, cli: Cli) -> None:
        """Each command does one thing and says so."""
        cli("db", "upgrade")
        cli("user", "add", "bob@example.test", "--password-stdin", stdin="first\n")
        assert cli("user", "passwd", "bob@example.test", "--password-stdin",
                   stdin="second\n").code == 0
        assert cli("check", "bob@example.test", "--password-stdin", stdin="first\n").code == 1
        assert cli("check", "bob@example.test", "--password-stdin", stdin="second\n").code == 0
        assert cli("user", "disable", "bob@example.test").code == 0
        table = cli("user", "list").out.splitlines()
        assert table[0].split() == ["ADDRESS", "ENABLED", "SCHEME"]
        assert table[1].split() == ["bob@example.test", "no", "argon2id"]
        assert cli("user", "enable", "bob@example.test").code == 0
        assert cli("check", "bob@example.test", "--password-stdin", stdin="second\n").code == 0
        assert cli("user", "delete", "bob@example.test").code == 0
        assert json.loads(cli("user", "list", "--json").out) == []
        gone = cli("check", "bob@example.test", "--password-stdin", stdin="second\n")
        assert gone.out.strip() == "no unknown-user"

    def test_grants(self, cli: Cli) -> None:
        """Grants are canonicalised, listed, refused twice and removable."""
        cli("db", "upgrade")
        assert cli("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n").code == 0
        assert cli("grant", "add", "Alice@Example.test", "@Other.TEST").code == 0
        again = cli("grant", "add", "alice@example.test", "@other.test")
        assert again.code == 2
        assert "may already send as @other.test" in again.err
        assert cli("grant", "add", "alice@example.test", "sales@third.test").code == 0
        assert json.loads(cli("grant", "list", "alice@example.test", "--json").out) == [
            {"id": "alice@example.test", "sender": "@other.test"},
            {"id": "alice@example.test", "sender": "sales@third.test"},
        ]
        assert cli("grant", "remove", "alice@example.test", "@other.test").code == 0
        missing = cli("grant", "remove", "alice@example.test", "@other.test")
        assert missing.code == 2
        assert cli("grant", "add", "alice@example.test", "@bad domain").code == 2

    def test_hash_prints_a_verifiable_argon2id(self, cli: Cli) -> None:
        """`eximauthd hash` writes the configured argon2id and nothing else."""
        import argon2  # noqa: PLC0415

        run = cli("hash", "--password-stdin", stdin=SECRET + "\n")
        assert run.code == 0
        encoded = run.out.strip()
        assert encoded.startswith("$argon2id$v=19$m=8,t=1,p=1$")
        assert argon2.PasswordHasher().verify(encoded, SECRET)


class TestBadInput:
    """One clear line on stderr, a documented exit code, nothing half-written."""

    @pytest.mark.parametrize(("args", "stdin", "code", "message"), [
        (["user", "add", "not-an-address", "--password-stdin"], "pw\n", 2, "not an address"),
        (["user", "add", "x@example.test", "--password-stdin"], "\n", 2,
         "empty password refused"),
        (["user", "add", "x@example.test"], "", 2, "pass --password-stdin"),
        (["user", "disable", "ghost@example.test"], "", 2, "no such user"),
        (["user", "delete", "ghost@example.test"], "", 2, "no such user"),
    ])
    def test_refused_with_one_line(self, cli: Cli, args: list[str], stdin: str, code: int,
                                   message: str) -> None:
        """The error names the problem; stdout stays empty."""
        cli("db", "upgrade")
        run = cli(*args, stdin=stdin)
        assert run.code == code
        assert run.err.count("\n") == 1
        assert run.err.startswith("eximauthd: error: ")
        assert message in run.err

    @pytest.mark.parametrize("client_ip", ["not-an-ip", "fe80::1%eth0", "192.0.2.1 x",
                                           "192.0.2.300", " 192.0.2.1"])
    def test_check_refuses_a_client_ip_the_socket_refuses(self, cli: Cli,
                                                          client_ip: str) -> None:
        """`check --client-ip` is validated as the protocol's field: exit 2, no verdict."""
        cli("db", "upgrade")
        cli("user", "add", "ip@example.test", "--password-stdin", stdin=SECRET + "\n")
        run = cli("check", "ip@example.test", "--password-stdin", "--client-ip", client_ip,
                  stdin=SECRET + "\n")
        assert (run.code, run.out) == (2, "")
        assert run.err.count("\n") == 1
        assert run.err.startswith("eximauthd: error: --client-ip: ")
        good = cli("check", "ip@example.test", "--password-stdin", "--client-ip", "2001:db8::1",
                   stdin=SECRET + "\n")
        assert (good.code, good.out.strip()) == (0, "yes ok")
        _assert_no_secret(run, good)

    def test_throttle_reset_refuses_a_scoped_address(self, cli: Cli) -> None:
        """`throttle reset --ip` takes what the protocol takes: no scope id."""
        cli("db", "upgrade")
        run = cli("throttle", "reset", "--ip", "fe80::1%eth0")
        assert run.code == 2
        assert run.err.startswith("eximauthd: error: --ip: ")

    def test_duplicate_user_changes_nothing(self, cli: Cli) -> None:
        """A second add for the same address fails and keeps the first password."""
        cli("db", "upgrade")
        cli("user", "add", "dup@example.test", "--password-stdin", stdin="one\n")
        again = cli("user", "add", "DUP@example.test", "--password-stdin", stdin="two\n")
        assert again.code == 2
        assert "user already exists: dup@example.test" in again.err
        assert cli("check", "dup@example.test", "--password-stdin", stdin="one\n").code == 0

    def test_missing_schema_says_what_to_run(self, cli: Cli) -> None:
        """Before `db upgrade`: exit 3 and the command to run."""
        run = cli("user", "list")
        assert run.code == 3
        assert "eximauthd db upgrade" in run.err

    def test_unreachable_database(self, tmp_path: Path) -> None:
        """A database that refuses connections: exit 3, no password from the URL."""
        cli = _runner(_base_env() | {
            "EXIMAUTHD_DATABASE_URL": "mysql+pymysql://u:hunter2@127.0.0.1:9/mail",
            "EXIMAUTHD_DATABASE_CONNECT_TIMEOUT": "1"}, tmp_path)
        run = cli("check", "a@example.test", "--password-stdin", stdin="x\n")
        assert run.code == 3
        assert "cannot connect" in run.err
        assert "hunter2" not in run.err

    def test_bad_config_exits_2_naming_the_key(self, tmp_path: Path) -> None:
        """A typo in the file: exit 2, one line, the key named."""
        path = tmp_path / "bad.toml"
        path.write_text("[hashing]\ntime_cots = 2\n")
        run = _runner(_base_env(), tmp_path)("--config", str(path), "user", "list")
        assert run.code == 2
        assert run.err.strip().startswith("eximauthd: error: hashing.time_cots: unknown key")


def test_installed_wheel_ships_migrations(installed_wheel: InstalledWheel,
                                          tmp_path: Path) -> None:
    """`pip install .` (not editable) then `eximauthd db upgrade` works outside the checkout."""
    names = zipfile.ZipFile(installed_wheel.wheel).namelist()
    assert "eximauthd/db/migrations/env.py" in names
    assert "eximauthd/db/migrations/versions/0001_initial.py" in names
    assert "eximauthd/db/migrations/versions/0002_abuse_defenses.py" in names
    assert "eximauthd/db/migrations/versions/0003_auth_attempts.py" in names
    assert "eximauthd/db/migrations/versions/0004_exact_addresses.py" in names
    assert "eximauthd/py.typed" in names
    venv = installed_wheel.venv
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _base_env() | {"PYTHONPATH": ""}
    run = subprocess.run([str(venv / "bin" / "eximauthd"), "db", "upgrade"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert "to revision 0004" in run.stdout
    assert (work / "eximauthd.sqlite3").exists()
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import eximauthd; print(eximauthd.__file__)"],
                           capture_output=True, text=True, check=True, cwd=work)
    assert str(venv) in where.stdout
    # The man pages: in the wheel, installed beside bin/, found by man-db through PATH.
    assert any(n.endswith(".data/data/share/man/man1/eximauthd-user-show.1") for n in names)
    page = venv / "share" / "man" / "man1" / "eximauthd.1"
    assert page.exists()
    found = subprocess.run(["man", "-w", "eximauthd"], capture_output=True, text=True,
                           env=env | {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "MANPATH": ""},
                           timeout=60, check=False)
    assert found.stdout.strip() == str(page), found.stderr
