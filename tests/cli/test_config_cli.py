"""Which configuration the command uses, what it says about it, and ``config show``.

The real lookup of /etc/eximauthd/eximauthd.toml is exercised without touching the machine's
/etc: the command runs in a private mount namespace whose /etc is an overlay (the real /etc
below, a temporary directory on top), so the file exists for that process only.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from eximauthd.config import DEFAULT_CONFIG_PATH, load_config
from eximauthd.settings import SECRET

from ..support import FAST_HASHING_ENV, MARIADB_HOST, MARIADB_PORT, Run, in_ci

PASSWORD = "S3cret-pass"
# A line of `config show`: a comment, or `section.key = value  # origin`.
_LINE_RE = re.compile(r"# configuration file: .+|[a-z_]+\.[a-z_0-9]+ = .+  # "
                      r"(default|file .+|environment EXIMAUTHD_[A-Z_0-9]+)")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    return env | FAST_HASHING_ENV | extra


def _run(*args: str, env: dict[str, str], cwd: Path, stdin: str = "",
         prefix: tuple[str, ...] = ()) -> Run:
    proc = subprocess.run([*prefix, sys.executable, "-m", "eximauthd", *args], input=stdin,
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
                          check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def _etc_overlay(tmp_path: Path, content: str) -> tuple[str, ...]:
    """A command prefix: what follows sees /etc/eximauthd/eximauthd.toml holding *content*,
    in a mount namespace of its own; the real /etc is never written."""
    upper, work = tmp_path / "etc-upper", tmp_path / "etc-work"
    (upper / "eximauthd").mkdir(parents=True)
    work.mkdir()
    (upper / "eximauthd" / "eximauthd.toml").write_text(content)
    script = ('mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc '
              '&& shift 2 && exec "$@"')
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(upper), str(work))


@pytest.fixture
def etc_overlay(tmp_path: Path) -> Any:
    """:func:`_etc_overlay`, once the machine has shown it can (root, overlayfs)."""
    probe = subprocess.run([*_etc_overlay(tmp_path / "probe", ""), "test", "-f",
                            DEFAULT_CONFIG_PATH], capture_output=True, text=True, timeout=30,
                           check=False)
    if probe.returncode != 0:
        message = f"no private /etc overlay here: {probe.stderr.strip()[:200]}"
        if in_ci():
            pytest.fail(message + " (CI=true: the lookup of the default file must be tested)")
        pytest.skip(message)
    return lambda content: _etc_overlay(tmp_path, content)


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    """A working directory like /root: nothing in it."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


class TestWhichFile:
    """--config > EXIMAUTHD_CONFIG > /etc/eximauthd/eximauthd.toml > built-in."""

    def test_root_in_any_directory_reaches_the_database_of_the_default_file(
            self, etc_overlay: Any, tmp_path: Path, empty_dir: Path) -> None:
        """The issue: `user add` in /root wrote a stray SQLite file there.  With the default
        file present it reaches the configured database, and says nothing extra."""
        prod = tmp_path / "prod.sqlite3"
        prefix = etc_overlay(f"[database]\nurl = 'sqlite:///{prod}'\n")
        runs = [_run("db", "upgrade", env=_env(HOME=str(empty_dir)), cwd=empty_dir,
                     prefix=prefix),
                _run("user", "add", "alice@example.test", "--password-stdin",
                     env=_env(HOME=str(empty_dir)), cwd=empty_dir, stdin=PASSWORD + "\n",
                     prefix=prefix)]
        assert [(r.code, r.err) for r in runs] == [(0, ""), (0, "")]
        assert runs[1].out == "added alice@example.test\n"
        assert list(empty_dir.iterdir()) == []
        with sa.create_engine(f"sqlite:///{prod}").connect() as conn:
            users = conn.execute(sa.text("SELECT address FROM eximauthd_users")).scalars()
            assert list(users) == ["alice@example.test"]
        shown = _run("config", "show", "-n", env=_env(), cwd=empty_dir, prefix=prefix)
        assert shown.out.splitlines()[:2] == [
            f"# configuration file: {DEFAULT_CONFIG_PATH} (the default location)",
            f'database.url = "sqlite:///{prod}"  # file {DEFAULT_CONFIG_PATH}']

    @pytest.mark.parametrize(("places", "winner"), [
        (("etc",), DEFAULT_CONFIG_PATH + " (the default location)"),
        (("etc", "env"), "{env} (EXIMAUTHD_CONFIG)"),
        (("etc", "env", "option"), "{option} (--config)"),
        (("etc", "option"), "{option} (--config)"),
    ])
    def test_the_first_place_given_wins(self, etc_overlay: Any, tmp_path: Path,
                                        empty_dir: Path, places: tuple[str, ...],
                                        winner: str) -> None:
        """Each place's file names its own socket; `config show -n` tells which was read."""
        files = {place: _write(tmp_path, f"[socket]\npath = '/run/{place}.sock'\n", place)
                 for place in ("env", "option")}
        env = _env(EXIMAUTHD_CONFIG=str(files["env"])) if "env" in places else _env()
        args = ("--config", str(files["option"])) if "option" in places else ()
        shown = _run(*args, "config", "show", "-n", env=env, cwd=empty_dir,
                     prefix=etc_overlay("[socket]\npath = '/run/etc.sock'\n"))
        assert shown.code == 0, shown.err
        header, socket_line = shown.out.splitlines()[:2]
        source = winner.format(env=files["env"], option=files["option"])
        assert header == f"# configuration file: {source}"
        place = next(p for p in ("option", "env", "etc") if p in places)
        assert socket_line.startswith(f'socket.path = "/run/{place}.sock"  # file ')

    def test_the_built_in_default_is_announced(self, empty_dir: Path) -> None:
        """No file anywhere: every command that used the database says which one and why, in
        one line on stderr; an error says it inside its one line."""
        if os.path.lexists(DEFAULT_CONFIG_PATH):
            pytest.skip(f"{DEFAULT_CONFIG_PATH} exists on this machine")
        env = _env(HOME=str(empty_dir))
        note = (f"using the built-in default configuration: SQLite {empty_dir}/eximauthd.sqlite3; "
                f"no {DEFAULT_CONFIG_PATH}, no EXIMAUTHD_CONFIG, no --config")
        upgrade = _run("db", "upgrade", env=env, cwd=empty_dir)
        added = _run("user", "add", "alice@example.test", "--password-stdin", env=env,
                     cwd=empty_dir, stdin=PASSWORD + "\n")
        refused = _run("check", "alice@example.test", "--password-stdin", env=env, cwd=empty_dir,
                       stdin="wrong\n")
        for run, code in [(upgrade, 0), (added, 0), (refused, 1)]:
            assert (run.code, run.err) == (code, f"eximauthd: notice: {note}\n")
        missing = _run("user", "delete", "bob@example.test", env=env, cwd=empty_dir)
        assert (missing.code, missing.err) == (
            2, f"eximauthd: error: no such user: bob@example.test ({note})\n")
        shown = _run("config", "show", env=env, cwd=empty_dir)
        assert shown.out.splitlines()[0] == (
            f"# configuration file: none (no {DEFAULT_CONFIG_PATH}, no EXIMAUTHD_CONFIG, no "
            "--config): built-in defaults")
        assert shown.err == ""
        # Even when the file cannot be opened (here a directory has its name).
        blocked = empty_dir / "blocked"
        (blocked / "eximauthd.sqlite3").mkdir(parents=True)
        failed = _run("user", "list", env=env, cwd=blocked)
        assert (failed.code, failed.err) == (
            3, f"eximauthd: error: cannot open or create the SQLite file eximauthd.sqlite3: Is a "
               f"directory ({note.replace(str(empty_dir), str(blocked))})\n")
        # The same file named on purpose is a choice: nothing to announce.
        chosen = _run("user", "list", env=env | {
            "EXIMAUTHD_DATABASE_URL": "sqlite:///eximauthd.sqlite3"}, cwd=empty_dir)
        assert (chosen.code, chosen.err) == (0, "")

    def test_a_file_without_a_database_names_the_built_in_database(
            self, tmp_path: Path, empty_dir: Path) -> None:
        """A configuration file that sets everything but database.url: the error says so."""
        path = _write(tmp_path, "[socket]\npath = '/run/x.sock'\n")
        run = _run("--config", str(path), "user", "list", env=_env(), cwd=empty_dir)
        assert run.code == 3
        assert run.err.endswith(
            f" (using the built-in default database: SQLite {empty_dir}/eximauthd.sqlite3; "
            f"database.url is set neither in {path} nor by EXIMAUTHD_DATABASE_URL)\n")
        assert run.err.count("\n") == 1


def _write(tmp_path: Path, text: str, name: str = "eximauthd") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, "utf-8")
    return path


def _secret_file(path: Path, content: str) -> Path:
    path.write_text(content + "\n")
    path.chmod(0o640)
    return path


_SECRETS = ["url-Pw-7f3a", "replica-Pw-9c1e", "query-Pw-55d0", "token-4b8e9a1c2d3f4e5a",
            "file-Pw-0aa1", "node-Pw-3e77"]


@pytest.fixture(params=["in-urls", "in-files"])
def secret_config(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A configuration holding every kind of secret: in the URLs and http.token, or in
    database.password_file and the environment's EXIMAUTHD_HTTP_TOKEN."""
    throttle_key = _secret_file(tmp_path / "throttle.key", "throttle-key-material-0123456789")
    if request.param == "in-urls":
        return _write(tmp_path, f"""
[database]
url = "mysql+pymysql://ex:{_SECRETS[0]}@127.0.0.1/mail?passwd={_SECRETS[2]}&charset=utf8mb4"
replica_url = "mysql+pymysql://ro:{_SECRETS[1]}@127.0.0.1/mail"
failover_urls = ["mysql+pymysql://ex:{_SECRETS[5]}@127.0.0.2/mail"]
[http]
token = "{_SECRETS[3]}"
[throttle]
secret_file = "{throttle_key}"
"""), {}
    password_file = _secret_file(tmp_path / "db.password", _SECRETS[4])
    return _write(tmp_path, f"""
[database]
url = "mysql+pymysql://ex@127.0.0.1/mail"
password_file = "{password_file}"
[throttle]
secret_file = "{throttle_key}"
"""), {"EXIMAUTHD_HTTP_TOKEN": _SECRETS[3]}


class TestConfigShow:
    """Every setting, `section.key = value  # origin`, secrets masked, readable as TOML."""

    def test_no_secret_is_ever_printed(self, secret_config: tuple[Path, dict[str, str]],
                                       empty_dir: Path) -> None:
        """Not the URLs' passwords, not the token, not a password or key file's content."""
        path, extra = secret_config
        for args in [(), ("-n",)]:
            run = _run("--config", str(path), "config", "show", *args,
                       env=_env(**extra), cwd=empty_dir)
            assert run.code == 0, run.err
            for secret in [*_SECRETS, "throttle-key-material"]:
                assert secret not in run.out + run.err
            lines = run.out.splitlines()
            assert 'http.token = "********"  # ' in run.out
            assert all(_LINE_RE.fullmatch(line) for line in lines), lines
        if not extra:
            assert ('database.url = "mysql+pymysql://ex:***@127.0.0.1/mail?passwd=***&'
                    f'charset=utf8mb4"  # file {path}') in lines
            assert ('database.replica_url = "mysql+pymysql://ro:***@127.0.0.1/mail"  # '
                    f"file {path}") in lines
        else:
            assert f'database.url = "mysql+pymysql://ex@127.0.0.1/mail"  # file {path}' in lines
            assert (f'database.password_file = "{path.parent}/db.password"  # file {path}'
                    in lines)
            assert 'http.token = "********"  # environment EXIMAUTHD_HTTP_TOKEN' in lines

    def test_the_output_reads_back_as_the_settings_in_force(
            self, secret_config: tuple[Path, dict[str, str]], empty_dir: Path) -> None:
        """Parsed as TOML, every key not a secret has the value the command uses, and every
        key of every section is there once."""
        path, extra = secret_config
        run = _run("--config", str(path), "config", "show", env=_env(**extra), cwd=empty_dir)
        shown = tomllib.loads(run.out)
        config = load_config(path, environ=_env(**extra))
        expected_sections = {"database", "socket", "http", "hashing", "legacy", "policy",
                             "service", "throttle", "ratelimit", "cache", "dovecot_auth",
                             "postfix_policy"}
        assert set(shown) == expected_sections
        for section, values in shown.items():
            settings = getattr(config, section)
            fields = {f.name: f for f in settings.__dataclass_fields__.values()}
            assert set(values) == {name for name, f in fields.items()
                                   if not f.metadata.get("eximauthd.loaded")}
            for key, value in values.items():
                if fields[key].metadata.get(SECRET):
                    continue
                expected = getattr(settings, key)
                assert (tuple(value) if isinstance(value, list) else value) == expected, key

    def test_non_default_lists_what_the_file_and_the_environment_set(
            self, tmp_path: Path, empty_dir: Path) -> None:
        """-n: only the keys set, each with its origin; the environment wins over the file."""
        path = _write(tmp_path, "[hashing]\ntime_cost = 3\n"
                                "[policy]\nstrict_domains = ['example.test', 'x.test']\n"
                                "[socket]\npath = 'a\"b\\c \u2713'\n")
        run = _run("--config", str(path), "config", "show", "-n", env=_env(), cwd=empty_dir)
        assert run.out.splitlines() == [
            f"# configuration file: {path} (--config)",
            f'socket.path = "a\\u0022b\\u005cc \u2713"  # file {path}',
            "hashing.memory_cost = 8  # environment EXIMAUTHD_HASHING_MEMORY_COST",
            "hashing.time_cost = 1  # environment EXIMAUTHD_HASHING_TIME_COST",
            "hashing.hash_len = 16  # environment EXIMAUTHD_HASHING_HASH_LEN",
            f'policy.strict_domains = ["example.test", "x.test"]  # file {path}',
        ]
        assert tomllib.loads(run.out)["socket"]["path"] == 'a"b\\c \u2713'

    def test_a_bad_password_file_is_one_line_and_exit_2(self, tmp_path: Path,
                                                         empty_dir: Path) -> None:
        """config show reads the password file as every command does: a readable-by-all one
        is refused before anything is printed, its content unsaid."""
        secret = tmp_path / "db.password"
        secret.write_text("leaked-Pw-123\n")
        secret.chmod(0o644)
        path = _write(tmp_path, f"[database]\nurl = 'mysql+pymysql://ex@127.0.0.1/mail'\n"
                                f"password_file = '{secret}'\n")
        run = _run("--config", str(path), "config", "show", env=_env(), cwd=empty_dir)
        assert (run.code, run.out) == (2, "")
        assert run.err == (f"eximauthd: error: database.password_file: {secret}: is accessible "
                           f"to every local user (mode 0644; chmod o-rwx {secret})\n")


class TestPasswordFileOnMariaDB:
    """A MariaDB account with a password: password_file logs in, the URL stays bare."""

    @pytest.fixture
    def account(self, mariadb_admin: sa.Engine, mariadb_url: str) -> Any:
        """A MariaDB user with a password full of URL syntax, allowed on the test database."""
        user = f"eximauthd_pf_{secrets.token_hex(4)}"
        password = f"p@ss:w/rd%?#{secrets.token_hex(4)} ✓"
        database = sa.engine.make_url(mariadb_url).database
        quoted = mariadb_admin.dialect.identifier_preparer.quote(database or "")
        with mariadb_admin.begin() as conn:
            conn.execute(sa.text("CREATE USER :u@'%' IDENTIFIED BY :p"),
                         {"u": user, "p": password})
            conn.execute(sa.text(f"GRANT ALL ON {quoted}.* TO :u@'%'"), {"u": user})
        yield user, password, database
        with mariadb_admin.begin() as conn:
            conn.execute(sa.text("DROP USER IF EXISTS :u@'%'"), {"u": user})

    def test_the_password_file_logs_in(self, account: tuple[str, str, str], tmp_path: Path,
                                       empty_dir: Path) -> None:
        """db upgrade, user add and check through the password file; a wrong one is exit 3
        with "access denied"; neither password is ever printed."""
        user, password, database = account
        secret = _secret_file(tmp_path / "db.password", password)
        url = f"mysql+pymysql://{user}@{MARIADB_HOST}:{MARIADB_PORT}/{database}"
        path = _write(tmp_path, f"[database]\nurl = '{url}'\npassword_file = '{secret}'\n")
        env = _env()
        runs = [_run("--config", str(path), "db", "upgrade", env=env, cwd=empty_dir),
                _run("--config", str(path), "user", "add", "alice@example.test",
                     "--password-stdin", env=env, cwd=empty_dir, stdin=PASSWORD + "\n"),
                _run("--config", str(path), "check", "alice@example.test", "--password-stdin",
                     env=env, cwd=empty_dir, stdin=PASSWORD + "\n")]
        assert [(r.code, r.err) for r in runs] == [(0, ""), (0, ""), (0, "")]
        assert runs[2].out == "yes ok\n"
        _secret_file(secret, "wrong-" + secrets.token_hex(4))
        wrong = _run("--config", str(path), "user", "list", env=env, cwd=empty_dir)
        assert wrong.code == 3
        assert "access denied (user or password wrong)" in wrong.err
        for run in [*runs, wrong]:
            assert password not in run.out + run.err
            assert "wrong-" not in run.out + run.err

    def test_a_non_latin_1_password_in_the_url_logs_in_too(
            self, account: tuple[str, str, str], tmp_path: Path, empty_dir: Path) -> None:
        """The same password, percent-encoded in the URL: sent as UTF-8 like the file's (PyMySQL
        alone would have raised UnicodeEncodeError, a traceback)."""
        user, password, database = account
        url = sa.engine.URL.create("mysql+pymysql", user, password, MARIADB_HOST, MARIADB_PORT,
                                   database).render_as_string(hide_password=False)
        path = _write(tmp_path, f"[database]\nurl = '{url}'\n")
        run = _run("--config", str(path), "db", "upgrade", env=_env(), cwd=empty_dir)
        assert (run.code, run.err) == (0, "")
        assert password not in run.out
