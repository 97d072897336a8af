"""Configuration: TOML + environment, validated with one clear line naming the key."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from eximauthd.config import DEFAULT_CONFIG_PATH, builtin_database_note, load_config
from eximauthd.db.engine import Database
from eximauthd.errors import ConfigError
from eximauthd.settings import Config, ConfigSource, DatabaseConfig, LegacyConfig


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "eximauthd.toml"
    path.write_text(text, "utf-8")
    return path


class TestDefaults:
    """No file at all is the embedded default."""

    def test_embedded_default_is_sqlite_in_working_directory(self) -> None:
        """Nothing needs a server for a first try."""
        config = load_config(None, environ={})
        assert config.database.url == "sqlite:///eximauthd.sqlite3"
        assert config.socket.path == "eximauthd.sock"
        assert config.http.listen.startswith("127.0.0.1:")
        assert not config.legacy.configured

    def test_design_example_file_loads(self, tmp_path: Path) -> None:
        """The example file of docs/configuration.md's shape is valid as written."""
        path = _write(tmp_path, """
[database]
url = "mysql+pymysql://eximauthd:secret@127.0.0.1/mail"
[socket]
path = "/run/eximauthd/eximauthd.sock"
group = "Debian-exim"
[http]
enabled = true
listen = "127.0.0.1:8726"
[legacy]
table = "users"
local_part_column = "username"
domain_column = "domain"
password_column = "password"
enabled_column = "smtp"
""")
        config = load_config(path, environ={})
        assert config.legacy.table == "users"
        assert config.legacy.enabled_rule.matches(1)
        assert not config.legacy.enabled_rule.matches(0)
        assert config.socket.group == "Debian-exim"
        assert config.source == str(path)


class TestEnvironment:
    """EXIMAUTHD_<SECTION>_<KEY> overrides the file."""

    def test_env_overrides_file_and_is_coerced(self, tmp_path: Path) -> None:
        """Strings from the environment become the field's type."""
        path = _write(tmp_path, "[hashing]\ntime_cost = 3\n")
        config = load_config(path, environ={
            "EXIMAUTHD_HASHING_TIME_COST": "4",
            "EXIMAUTHD_HASHING_DOVECOT_PREFIX": "yes",
            "EXIMAUTHD_DATABASE_URL": "sqlite:////tmp/x.sqlite3",
        })
        assert config.hashing.time_cost == 4
        assert config.hashing.dovecot_prefix is True
        assert config.database.url == "sqlite:////tmp/x.sqlite3"

    def test_section_with_an_underscore_from_environment(self) -> None:
        """EXIMAUTHD_DOVECOT_AUTH_<KEY> is [dovecot_auth] <key>; disabled by default."""
        assert load_config(None, environ={}).dovecot_auth.enabled is False
        config = load_config(None, environ={
            "EXIMAUTHD_DOVECOT_AUTH_ENABLED": "true",
            "EXIMAUTHD_DOVECOT_AUTH_PATH": "/run/eximauthd/dovecot.sock",
            "EXIMAUTHD_DOVECOT_AUTH_LISTEN": "[::1]:12345",
        })
        dovecot = config.dovecot_auth
        assert (dovecot.enabled, dovecot.path, dovecot.listen, dovecot.mode) == (
            True, "/run/eximauthd/dovecot.sock", "[::1]:12345", "0660")

    def test_postfix_policy_from_environment(self) -> None:
        """EXIMAUTHD_POSTFIX_POLICY_<KEY> is [postfix_policy] <key>; disabled by default."""
        assert load_config(None, environ={}).postfix_policy.enabled is False
        config = load_config(None, environ={
            "EXIMAUTHD_POSTFIX_POLICY_ENABLED": "yes",
            "EXIMAUTHD_POSTFIX_POLICY_PATH": "/var/spool/postfix/private/eximauthd-policy",
            "EXIMAUTHD_POSTFIX_POLICY_GROUP": "postfix",
            "EXIMAUTHD_POSTFIX_POLICY_LISTEN": "127.0.0.1:10031",
        })
        policy = config.postfix_policy
        assert (policy.enabled, policy.path, policy.group, policy.listen, policy.mode) == (
            True, "/var/spool/postfix/private/eximauthd-policy", "postfix", "127.0.0.1:10031",
            "0660")

    def test_config_path_from_environment(self, tmp_path: Path) -> None:
        """EXIMAUTHD_CONFIG names the file and is not itself a setting."""
        path = _write(tmp_path, "[socket]\npath = \"/tmp/e.sock\"\n")
        assert load_config(None, environ={"EXIMAUTHD_CONFIG": str(path)}).socket.path == \
            "/tmp/e.sock"


@pytest.mark.parametrize(("text", "env", "message"), [
    ("[databse]\nurl = 'x'\n", {}, "databse: unknown section"),
    ("[database]\nuri = 'sqlite:///x'\n", {}, "database.uri: unknown key"),
    ("[hashing]\ntime_cost = '2'\n", {}, "hashing.time_cost: expected an integer"),
    ("[hashing]\ntime_cost = true\n", {}, "hashing.time_cost: expected an integer"),
    ("[http]\nenabled = 'yes'\n", {}, "http.enabled: expected true or false"),
    ("[database]\nurl = 'not a url'\n", {}, "database.url: not a valid database URL"),
    ("[database]\nurl = 'postgresql://x/y'\n", {}, "database.url: unsupported driver"),
    ("[database]\nurl = 'sqlite://'\n", {}, "database.url: an in-memory SQLite"),
    ("[database]\nurl = 'mysql+pymysql://u:p@h/'\n", {}, "database.url: the URL names no"),
    ("[socket]\nmode = '0666'\n", {}, "socket.mode: must not grant access to other users"),
    ("[socket]\nmode = 'rw'\n", {}, "socket.mode: expected an octal mode"),
    ("[http]\nlisten = '0.0.0.0:80'\n", {}, "http.listen: a non-loopback address needs"),
    ("[http]\nlisten = 'localhost'\n", {}, "http.listen: expected HOST:PORT"),
    ("[hashing]\nmemory_cost = 1000000\n", {}, "hashing.memory_cost: 1000000 is outside"),
    ("[hashing]\ntime_cost = 0\n", {}, "hashing.time_cost: 0 is outside"),
    ("[service]\nworkers = 257\n", {}, "service.workers: 257 is outside 0..256"),
    ("[cache]\nmax_entries = 0\n", {}, "cache.max_entries: 0 is outside 1..10000000"),
    ("[policy]\nstrict_domains = ['Example.test']\n", {},
     "policy.strict_domains: 'Example.test' is not a lower-case domain name"),
    ("[policy]\nstrict_domains = ['example.test', 'exa mple.test']\n", {},
     "policy.strict_domains: 'exa mple.test' is not a lower-case domain name"),
    ("[policy]\nstrict_domains = ['-x.test']\n", {}, "policy.strict_domains: '-x.test' is not"),
    ("[policy]\nstrict_domains = ['x..test']\n", {}, "policy.strict_domains: 'x..test' is not"),
    ("[policy]\nstrict_domains = ['x.test.']\n", {}, "policy.strict_domains: 'x.test.' is not"),
    ("[policy]\nstrict_domains = ['a@x.test']\n", {},
     "policy.strict_domains: 'a@x.test' is not"),
    ("[policy]\nstrict_domains = ['m\u00fcller.test']\n", {},
     "policy.strict_domains: 'm\u00fcller.test' is not"),
    ("[policy]\nstrict_domains = ['']\n", {}, "policy.strict_domains: '' is not"),
    ("[legacy]\nlocal_part_column = 'u'\n", {}, "legacy.table: required"),
    ("[legacy]\ntable = 'users'\n", {}, "legacy.address_column: set address_column"),
    ("[legacy]\ntable = 'users; drop'\naddress_column = 'a'\n", {},
     "legacy.table: 'users; drop' is not a plain SQL identifier"),
    ("[legacy]\ntable = 'u'\naddress_column = 'a'\nenabled_column = 'e'\n"
     "enabled_when = 'DROP'\n", {}, "legacy.enabled_when: expected an operator"),
    ("[legacy]\ntable = 'u'\naddress_column = 'a'\nenabled_column = 'e'\n"
     "enabled_when = '> 0'\nenabled_value = '0'\n", {},
     "legacy.enabled_value: '0' does not satisfy enabled_when"),
    ("[legacy]\ntable = 'u'\naddress_column = 'a'\npassword_scheme = 'MD5'\n", {},
     "legacy.password_scheme: 'MD5' is not one of auto, plain, md5-hex, sha1-hex, sha256-hex, "
     "sha512-hex, mysql-native, mysql323-hex, des-crypt"),
    ("[legacy]\npassword_scheme = 'md5-hex'\n", {}, "legacy.table: required"),
    ("", {"EXIMAUTHD_HASHING_TIME_COST": "two"},
     "EXIMAUTHD_HASHING_TIME_COST: expected an integer"),
    ("", {"EXIMAUTHD_HASHING_TIME_COST": "1_0"},
     "EXIMAUTHD_HASHING_TIME_COST: expected an integer"),
    ("", {"EXIMAUTHD_HASHING_TIME_COST": "\u0662"},
     "EXIMAUTHD_HASHING_TIME_COST: expected an integer"),
    ("", {"EXIMAUTHD_DATABSE_URL": "x"}, "EXIMAUTHD_DATABSE_URL: unknown setting"),
    ("", {"EXIMAUTHD_DATABASE_URI": "x"}, "EXIMAUTHD_DATABASE_URI: unknown key"),
    ("[database\n", {}, "invalid TOML"),
    ("[throttle]\nexempt_networks = ['192.0.2.1/24']\n", {},
     "throttle.exempt_networks: '192.0.2.1/24' is not a network"),
    ("[throttle]\nexempt_networks = ['webmail']\n", {},
     "throttle.exempt_networks: 'webmail' is not a network"),
    ("[throttle]\nrelease_delay_ms = 1001\n", {},
     "throttle.release_delay_ms: 1001 is outside 0..1000"),
    ("[hashing]\nverify_with = 'nacl'\n", {},
     "hashing.verify_with: expected one of auto, libsodium, argon2-cffi, got 'nacl'"),
    ("[policy]\ngrant_cache_seconds = 3601\n", {},
     "policy.grant_cache_seconds: 3601 is outside 0..3600"),
    ("", {"EXIMAUTHD_POLICY_GRANT_CACHE_SECONDS": "-1"},
     "policy.grant_cache_seconds: -1 is outside 0..3600"),
    ("[throttle]\nrelease_delay_ms = -1\n", {},
     "throttle.release_delay_ms: -1 is outside 0..1000"),
    ("[database]\nurl = 'mysql+pymysql://u@a/m'\nfailover_urls = ['sqlite:///x.db']\n", {},
     "database.failover_urls[0]: failover needs MariaDB/MySQL nodes"),
    ("[database]\nfailover_urls = ['mysql+pymysql://u@b/m']\n", {},
     "database.failover_urls: database.url is SQLite"),
    ("", {"EXIMAUTHD_DATABASE_URL": "mysql+pymysql://u@a/m",
          "EXIMAUTHD_DATABASE_FAILOVER_URLS": "mysql+pymysql://u@b/m,postgresql://u@c/m"},
     "database.failover_urls[1]: unsupported driver"),
    ("[database]\nurl = 'mysql+pymysql://u@a/m'\nfailover_urls = ['mysql+pymysql://u@b/m']\n"
     "failover_check_seconds = 0\n", {},
     "database.failover_check_seconds: must be between 1 and 60"),
    ("[dovecot_auth]\nlisten = '0.0.0.0:12345'\n", {},
     "dovecot_auth.listen: only a loopback address"),
    ("[dovecot_auth]\nlisten = '192.0.2.1:12345'\n", {},
     "dovecot_auth.listen: only a loopback address"),
    ("[dovecot_auth]\nlisten = 'localhost:12345'\n", {},
     "dovecot_auth.listen: host must be an IP address"),
    ("[dovecot_auth]\nlisten = '127.0.0.1'\n", {}, "dovecot_auth.listen: expected HOST:PORT"),
    ("[dovecot_auth]\nmode = '0666'\n", {}, "dovecot_auth.mode: must not grant access"),
    ("[dovecot_auth]\npath = ''\n", {}, "dovecot_auth.path: must not be empty"),
    ("[dovecot_auth]\nenabled = true\npath = 'eximauthd.sock'\n", {},
     "dovecot_auth.path: must differ from socket.path"),
    ("", {"EXIMAUTHD_DOVECOT_AUTH_LISTEN": "[2001:db8::1]:1"},
     "dovecot_auth.listen: only a loopback address"),
    ("", {"EXIMAUTHD_DOVECOT_PATH": "x"}, "EXIMAUTHD_DOVECOT_PATH: unknown setting"),
    ("[postfix_policy]\nlisten = '0.0.0.0:10031'\n", {},
     "postfix_policy.listen: only a loopback address"),
    ("[postfix_policy]\nlisten = 'localhost:10031'\n", {},
     "postfix_policy.listen: host must be an IP address"),
    ("[postfix_policy]\nlisten = '127.0.0.1:0'\n", {},
     "postfix_policy.listen: expected HOST:PORT"),
    ("[postfix_policy]\nmode = '0664'\n", {}, "postfix_policy.mode: must not grant access"),
    ("[postfix_policy]\nmode = 'rw'\n", {}, "postfix_policy.mode: expected an octal mode"),
    ("[postfix_policy]\nenabled = true\npath = 'eximauthd.sock'\n", {},
     "postfix_policy.path: must differ from socket.path"),
    ("[postfix_policy]\nenabled = true\npath = 'd.sock'\n"
     "[dovecot_auth]\nenabled = true\npath = 'd.sock'\n", {},
     "postfix_policy.path: must differ from socket.path and dovecot_auth.path"),
    ("", {"EXIMAUTHD_POSTFIX_POLICY_ENABLED": "maybe"},
     "EXIMAUTHD_POSTFIX_POLICY_ENABLED: expected true or false"),
    ("", {"EXIMAUTHD_DOVECOT_AUTH_PORT": "x"}, "EXIMAUTHD_DOVECOT_AUTH_PORT: unknown key"),
])
def test_invalid_configuration_names_the_key(tmp_path: Path, text: str, env: dict[str, str],
                                             message: str) -> None:
    """Every mistake is one ConfigError whose message starts with the key or variable."""
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), environ=env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_strict_domains_take_lower_case_domain_names(tmp_path: Path) -> None:
    """Lower-case names, one label or many, with digits and inner hyphens, load as written."""
    names = ["example.test", "x", "mail-1.example.test", "0.example.test", "a" * 63 + ".test"]
    path = _write(tmp_path, f"[policy]\nstrict_domains = {names!r}\n")
    assert list(load_config(path, environ={}).policy.strict_domains) == names


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A wrong --config path is reported, not silently replaced by defaults."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", environ={})


def test_database_password_never_in_repr() -> None:
    """The URL's password is masked wherever the config is printed."""
    db = DatabaseConfig(url="mysql+pymysql://eximauthd:hunter2@db/mail",
                        replica_url="mysql+pymysql://ro:hunter3@replica/mail",
                        failover_urls=("mysql+pymysql://eximauthd:hunter4@db2/mail",))
    text = repr(db) + str(db) + repr(Config(database=db))
    assert "hunter2" not in text
    assert "hunter3" not in text
    assert "hunter4" not in text
    assert "eximauthd:***@db2/mail" in text
    assert "eximauthd:***@db/mail" in text


def test_http_token_never_in_repr(tmp_path: Path) -> None:
    """The bearer token is a secret too."""
    path = _write(tmp_path, "[http]\ntoken = 'tok-abcdef'\n")
    assert "tok-abcdef" not in repr(load_config(path, environ={}))


def test_http_token_file_defaults_to_the_working_directory(tmp_path: Path) -> None:
    """Without token or token_file, serve uses eximauthd-http.token; a named file may serve a
    non-loopback listener (remote clients need a token they can be given)."""
    assert load_config(None, environ={}).http.token_path == "eximauthd-http.token"
    http = load_config(_write(tmp_path, "[http]\nlisten = '0.0.0.0:8726'\n"),
                       environ={"EXIMAUTHD_HTTP_TOKEN_FILE": "/var/lib/x/http.token"}).http
    assert (http.token_path, http.listen) == ("/var/lib/x/http.token", "0.0.0.0:8726")


def test_config_is_frozen() -> None:
    """Settings cannot change under a running service."""
    config = load_config(None, environ={})
    with pytest.raises(AttributeError):
        config.database.url = "sqlite:///other"  # type: ignore[misc]


@pytest.mark.parametrize("scheme", ["auto", "plain", "md5-hex", "mysql-native", "mysql323-hex",
                                    "des-crypt"])
def test_legacy_password_scheme_is_read_from_file_and_environment(tmp_path: Path,
                                                                  scheme: str) -> None:
    """[legacy] password_scheme defaults to auto and takes each documented value."""
    text = "[legacy]\ntable = 'u'\naddress_column = 'a'\n"
    assert load_config(_write(tmp_path, text), environ={}).legacy.password_scheme == "auto"
    from_file = load_config(_write(tmp_path, text + f"password_scheme = '{scheme}'\n"),
                            environ={})
    assert from_file.legacy.password_scheme == scheme
    from_env = load_config(_write(tmp_path, text),
                           environ={"EXIMAUTHD_LEGACY_PASSWORD_SCHEME": scheme})
    assert from_env.legacy.password_scheme == scheme


# F3: the enabled rule's truth table.  Columns: the stored values a panel, a driver or a hand
# edit can leave in the enabled column; rows: each kind of rule.  The old inline SQL compared
# under a caseless PAD SPACE collation and converted strings to numbers: where Python's ==/int()
# would differ from it, the answer is "not enabled", never "enabled".
ENABLED_STORED = (None, "", " 1", "1 ", "1_0", "\u0661", "N", "n ", "Y", b"y", 1, True, 0,
                  "\u00f1")
# One character per stored value above, in order: "+" enabled, "." not enabled.
#                None '' ' 1' '1 ' '1_0' U+0661 'N' 'n ' 'Y' b'y' 1 True 0 U+00F1
ENABLED_TRUTH = {
    "> 0":    "..++......++..",
    "= 1":    "..++......++..",
    "!= 0":   "..++......++..",
    "<> 0":   "..++......++..",
    ">= 1":   "..++......++..",
    "< 1":    "............+.",
    "= 'y'":  "........++....",
    "= 'Y '": "........++....",
    "!= 'n'": "..+++...+++++.",
    "<> 'N'": "..+++...+++++.",
    "= '1'":  "...+......++..",
}


@pytest.mark.parametrize("rule", sorted(ENABLED_TRUTH))
def test_enabled_rule_truth_table_fails_closed(rule: str) -> None:
    """Case, trailing spaces, '1_0', other scripts' digits, NULL never enable what SQL did not."""
    parsed = LegacyConfig(table="u", address_column="a", enabled_column="e",
                          enabled_when=rule).enabled_rule
    got = tuple(parsed.matches(v) for v in ENABLED_STORED)
    assert "".join("+" if g else "." for g in got) == ENABLED_TRUTH[rule]


@pytest.mark.parametrize("when", ["> \u0661", "= '\u00f1'", "= 'it''s'"])
def test_enabled_rule_with_non_ascii_or_quoted_literal_is_refused(tmp_path: Path,
                                                                  when: str) -> None:
    """A literal that no collation-free comparison can honour stops the program at load."""
    text = (f"[legacy]\ntable = 'u'\naddress_column = 'a'\nenabled_column = 'e'\n"
            f"enabled_when = \"{when}\"\n")
    with pytest.raises(ConfigError, match=r"legacy\.enabled_when: expected an operator"):
        load_config(_write(tmp_path, text), environ={})


@pytest.mark.parametrize("url", [
    "mysql+pymysql://eximauthd@db/mail?password=hunter2",
    "mysql+pymysql://eximauthd@db/mail?charset=utf8mb4&passwd=hunter2",
    "mysql+pymysql://eximauthd:hunter2@db/mail?PASSWORD=hunter2&ssl_key=/k",
    "mysql+pymysql://eximauthd@db/mail?secret=hunter2&token=hunter2&Passwd=hunter2",
])
def test_database_password_in_url_query_is_masked(url: str) -> None:
    """?password=, ?passwd= (any case) and other credential-like query values never print."""
    db = DatabaseConfig(url=url, replica_url=url)
    text = repr(db) + str(db)
    assert "hunter2" not in text
    assert "=***" in text
    assert "@db/mail" in text


def test_database_url_mask_keeps_harmless_query_values() -> None:
    """The charset is not a secret: the log line still says which options are in use."""
    db = DatabaseConfig(url="mysql+pymysql://u@db/mail?charset=utf8mb4&password=hunter2")
    assert "charset=utf8mb4" in repr(db)
    assert "hunter2" not in repr(db)


def test_database_url_with_bad_port_is_one_config_error(tmp_path: Path) -> None:
    """A non-numeric port is a ConfigError naming the key, never a traceback or the URL."""
    text = "[database]\nurl = 'mysql+pymysql://u:hunter2@db:port/mail?password=hunter2'\n"
    with pytest.raises(ConfigError, match=r"database\.url: not a valid database URL") as info:
        load_config(_write(tmp_path, text), environ={})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("when", ["< 'a'", "<= 'm'", "> 'n'", ">= 'y'"])
def test_an_ordered_text_rule_is_refused(tmp_path: Path, when: str) -> None:
    """'_' < 'a' in Python but not in MariaDB's default collation: only = and != take text."""
    text = (f"[legacy]\ntable = 'u'\naddress_column = 'a'\nenabled_column = 'e'\n"
            f"enabled_when = \"{when}\"\n")
    with pytest.raises(ConfigError, match=r"legacy\.enabled_when: .* collation order"):
        load_config(_write(tmp_path, text), environ={})


# --- where the file comes from ------------------------------------------------------------------


class TestLookup:
    """--config (the *path* argument), then EXIMAUTHD_CONFIG, then the default path if present,
    then the built-in defaults.  The default path is a keyword here; the CLI's real lookup of
    /etc/eximauthd/eximauthd.toml is tested through the command (tests/cli/test_config_cli.py)."""

    @pytest.mark.parametrize(("given", "found"), [
        (("argument", "environment", "default"), ConfigSource.ARGUMENT),
        (("argument", "default"), ConfigSource.ARGUMENT),
        (("argument",), ConfigSource.ARGUMENT),
        (("environment", "default"), ConfigSource.ENVIRONMENT),
        (("environment",), ConfigSource.ENVIRONMENT),
        (("default",), ConfigSource.DEFAULT_PATH),
        ((), ConfigSource.BUILT_IN),
    ])
    def test_the_first_place_given_wins(self, tmp_path: Path, given: tuple[str, ...],
                                        found: ConfigSource) -> None:
        """Each place holds a file naming its own socket: the one in force tells which won."""
        files = {}
        for place in ("argument", "environment", "default"):
            files[place] = tmp_path / f"{place}.toml"
            if place in given:
                files[place].write_text(f"[socket]\npath = '/run/{place}.sock'\n")
        config = load_config(
            files["argument"] if "argument" in given else None,
            environ={"EXIMAUTHD_CONFIG": str(files["environment"])}
            if "environment" in given else {},
            default_path=files["default"])
        assert config.found is found
        winner = {ConfigSource.ARGUMENT: "argument", ConfigSource.ENVIRONMENT: "environment",
                  ConfigSource.DEFAULT_PATH: "default"}.get(found)
        if winner is None:
            assert (config.source, config.socket.path) == ("built-in defaults", "eximauthd.sock")
        else:
            assert config.source == str(files[winner])
            assert config.socket.path == f"/run/{winner}.sock"

    def test_an_empty_eximauthd_config_is_unset(self, tmp_path: Path) -> None:
        """EXIMAUTHD_CONFIG= (empty, as a unit's Environment= may leave it) falls through."""
        default = _write(tmp_path, "[socket]\npath = '/run/d.sock'\n")
        config = load_config(None, environ={"EXIMAUTHD_CONFIG": ""}, default_path=default)
        assert (config.found, config.socket.path) == (ConfigSource.DEFAULT_PATH, "/run/d.sock")

    def test_a_named_file_that_is_missing_is_an_error_not_the_default(
            self, tmp_path: Path) -> None:
        """--config or EXIMAUTHD_CONFIG naming nothing never falls back to the default file."""
        default = _write(tmp_path, "")
        for path, env in [(tmp_path / "nope.toml", {}),
                          (None, {"EXIMAUTHD_CONFIG": str(tmp_path / "nope.toml")})]:
            with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
                load_config(path, environ=env, default_path=default)

    @pytest.mark.parametrize("shape", ["dangling-symlink", "directory"])
    def test_something_unreadable_at_the_default_path_is_an_error(self, tmp_path: Path,
                                                                  shape: str) -> None:
        """Only "nothing there" means "built-in defaults": a broken production file is
        reported, with the way out, rather than silently replaced by a SQLite file here."""
        default = tmp_path / "eximauthd.toml"
        if shape == "directory":
            default.mkdir()
        else:
            default.symlink_to(tmp_path / "gone.toml")
        with pytest.raises(ConfigError) as info:
            load_config(None, environ={}, default_path=default)
        assert str(info.value).startswith(f"{default}: cannot read: ")
        assert str(info.value).endswith("or name another with --config)")

    def test_a_missing_default_directory_means_built_in(self, tmp_path: Path) -> None:
        """/etc/eximauthd not even created: the quick start's case."""
        config = load_config(None, environ={}, default_path=tmp_path / "no" / "eximauthd.toml")
        assert (config.found, config.source) == (ConfigSource.BUILT_IN, "built-in defaults")

    def test_the_default_path_is_the_one_documented(self) -> None:
        """The constant the CLI uses by default (the docs and contrib name it)."""
        assert DEFAULT_CONFIG_PATH == "/etc/eximauthd/eximauthd.toml"
        assert load_config.__kwdefaults__ == {"default_path": DEFAULT_CONFIG_PATH}


class TestOrigins:
    """Each key set by the file or the environment remembers where; the rest are defaults."""

    def test_file_environment_and_default_origins(self, tmp_path: Path) -> None:
        """The environment's value and origin win over the file's for the same key."""
        path = _write(tmp_path, "[hashing]\ntime_cost = 3\nmemory_cost = 8192\n"
                                "[socket]\npath = '/run/x.sock'\n")
        config = load_config(path, environ={"EXIMAUTHD_HASHING_TIME_COST": "4"},
                             default_path=None)
        assert config.origin("hashing.time_cost") == "environment EXIMAUTHD_HASHING_TIME_COST"
        assert config.origin("hashing.memory_cost") == f"file {path}"
        assert config.origin("socket.path") == f"file {path}"
        assert config.origin("hashing.parallelism") == "default"
        assert config.origin("database.url") == "default"
        assert {key for key, _ in config.origins} == {
            "hashing.time_cost", "hashing.memory_cost", "socket.path"}

    @pytest.mark.parametrize(("text", "env", "expected"), [
        ("", {}, "using the built-in default configuration: SQLite {cwd}/eximauthd.sqlite3; "
                 "no /etc/eximauthd/eximauthd.toml, no EXIMAUTHD_CONFIG, no --config"),
        ("[socket]\npath = '/run/x.sock'\n", {},
         "using the built-in default database: SQLite {cwd}/eximauthd.sqlite3; database.url "
         "is set neither in {file} nor by EXIMAUTHD_DATABASE_URL"),
        ("[database]\nurl = 'sqlite:///eximauthd.sqlite3'\n", {}, None),
        ("", {"EXIMAUTHD_DATABASE_URL": "sqlite:///eximauthd.sqlite3"}, None),
    ])
    def test_the_builtin_database_is_named_only_when_nothing_set_it(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
            env: dict[str, str], expected: str | None) -> None:
        """The same file set explicitly is a choice, not an accident: no note then."""
        monkeypatch.chdir(tmp_path)
        path = _write(tmp_path, text) if text else None
        note = builtin_database_note(load_config(path, environ=env, default_path=None))
        assert note == (expected.format(cwd=tmp_path, file=path) if expected else None)


# --- database.password_file ---------------------------------------------------------------------

DB_PASSWORD = "pw-S3kr1t ✓ :@/%?#"


def _password_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "db.password"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def _mysql_config(tmp_path: Path, password_file: Path, url: str = "mysql+pymysql://ex@db/mail",
                  extra: str = "") -> Path:
    return _write(tmp_path, f"[database]\nurl = '{url}'\npassword_file = '{password_file}'\n"
                            + extra)


_SECRET = b"S3kr1t-content"
_DOUBTFUL_CONTENT = {
    "world-readable": (_SECRET, 0o644),
    "world-writable": (_SECRET, 0o602),
    "empty": (b"", 0o600),
    "only-a-newline": (b"\n", 0o600),
    "two-lines": (_SECRET + b"\n\n", 0o600),
    "shadow-like": (b"root:" + _SECRET + b":19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
                    0o640),
    "carriage-return": (_SECRET + b"\r", 0o600),
    "nul": (_SECRET + b"\0x\n", 0o600),
    "not-utf-8": (_SECRET + b"\xff\xfe\n", 0o600),
    "too-long": (_SECRET * 80, 0o600),
}


class TestPasswordFile:
    """database.password_file keeps the database password out of the TOML and the URL."""

    @pytest.mark.parametrize(("content", "password"), [
        (DB_PASSWORD.encode() + b"\n", DB_PASSWORD),
        (DB_PASSWORD.encode(), DB_PASSWORD),
        (DB_PASSWORD.encode() + b"\r\n", DB_PASSWORD),
        (b" padded \n", " padded "),
    ])
    @pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o660])
    def test_the_first_line_is_the_password(self, tmp_path: Path, content: bytes,
                                            password: str, mode: int) -> None:
        """One trailing LF or CRLF is stripped, nothing else; the group may read the file (the
        service's group), and the password is in no repr."""
        config = load_config(_mysql_config(tmp_path, _password_file(tmp_path, content, mode)),
                             environ={}, default_path=None)
        assert config.database.password == password
        assert config.database.url == "mysql+pymysql://ex@db/mail"
        assert password not in repr(config) + str(config.database)

    def test_named_by_the_environment_too(self, tmp_path: Path) -> None:
        """EXIMAUTHD_DATABASE_PASSWORD_FILE, as any key; the password itself is no key."""
        secret = _password_file(tmp_path, b"pw-from-file\n")
        path = _write(tmp_path, "[database]\nurl = 'mysql+pymysql://ex@db/mail'\n")
        config = load_config(path, environ={"EXIMAUTHD_DATABASE_PASSWORD_FILE": str(secret)},
                             default_path=None)
        assert config.database.password == "pw-from-file"
        for text, env, where in [
            ("[database]\npassword = 'x'\n", {}, "database.password"),
            ("", {"EXIMAUTHD_DATABASE_PASSWORD": "x"}, "EXIMAUTHD_DATABASE_PASSWORD"),
        ]:
            with pytest.raises(ConfigError, match=rf"^{where}: unknown key \(known: "
                                                  r"connect_timeout, failover_check_seconds, "
                                                  r"failover_urls, password_file, "
                                                  r"replica_url, url\)$"):
                load_config(_write(tmp_path, text), environ=env, default_path=None)

    @pytest.mark.parametrize(("shape", "message"), [
        ("symlink-to-private", "is a symlink (point database.password_file at the file itself)"),
        ("symlink-to-missing", "is a symlink (point database.password_file at the file itself)"),
        ("world-readable", "is accessible to every local user (mode 0644; chmod o-rwx "),
        ("world-writable", "is accessible to every local user (mode 0602; chmod o-rwx "),
        ("directory", "is not a regular file"),
        ("fifo", "is not a regular file"),
        ("missing", "cannot read: No such file or directory"),
        ("empty", "is empty"),
        ("only-a-newline", "is empty"),
        ("two-lines", "holds more than one line (only one trailing newline is stripped)"),
        ("shadow-like", "holds more than one line (only one trailing newline is stripped)"),
        ("carriage-return", "holds more than one line (only one trailing newline is stripped)"),
        ("nul", "holds a NUL byte"),
        ("not-utf-8", "is not UTF-8"),
        ("too-long", "holds more than 1024 bytes (one line: the password)"),
    ])
    def test_a_doubtful_file_is_refused_without_showing_it(self, tmp_path: Path, shape: str,
                                                           message: str) -> None:
        """One line naming the key, the path and the fix; never a byte of the content."""
        path = tmp_path / "db.password"
        match shape:
            case "symlink-to-private":
                # A private file (think /etc/shadow) lent to whoever may name the link.
                (tmp_path / "private").mkdir()
                path.symlink_to(_password_file(tmp_path / "private", _SECRET + b"\n"))
            case "symlink-to-missing":
                path.symlink_to(tmp_path / "gone")
            case "directory":
                path.mkdir()
            case "fifo":
                os.mkfifo(path, 0o600)  # would block a plain open() for ever
            case "missing":
                pass
            case _:
                _password_file(tmp_path, *_DOUBTFUL_CONTENT[shape])
        with pytest.raises(ConfigError) as info:
            load_config(_mysql_config(tmp_path, path), environ={}, default_path=None)
        text = str(info.value)
        assert text.startswith(f"database.password_file: {path}: ")
        assert message in text
        assert "\n" not in text
        assert b"S3kr1t" not in text.encode()

    @pytest.mark.parametrize(("url", "replica", "key"), [
        ("mysql+pymysql://ex:inline@db/mail", "", "url"),
        ("mysql+pymysql://ex:@db/mail", "", "url"),
        ("mysql+pymysql://ex@db/mail?password=inline", "", "url"),
        ("mysql+pymysql://ex@db/mail?PASSWD=inline", "", "url"),
        ("mysql+pymysql://ex@db/mail", "mysql+pymysql://ro:inline@replica/mail", "replica_url"),
        ("mysql+pymysql://ex@db/mail", "", "failover_urls[1]"),
    ])
    def test_a_password_in_a_url_too_is_refused(self, tmp_path: Path, url: str, replica: str,
                                                key: str) -> None:
        """Two passwords: which one is meant?  Neither is chosen; the URL's is not shown."""
        nodes = ("failover_urls = ['mysql+pymysql://ex@db2/mail', "
                 "'mysql+pymysql://ex:inline@db3/mail']\n" if key.startswith("failover") else "")
        path = _mysql_config(tmp_path, _password_file(tmp_path, b"from-file\n"), url,
                             f"replica_url = '{replica}'\n{nodes}")
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={}, default_path=None)
        assert str(info.value) == (f"database.password_file: database.{key} holds a password "
                                   "too (keep it in one place: remove it from the URL)")

    def test_sqlite_takes_no_password(self, tmp_path: Path) -> None:
        """A password file next to a SQLite URL is a mistake, not something to ignore."""
        path = _mysql_config(tmp_path, _password_file(tmp_path, b"pw\n"),
                             f"sqlite:///{tmp_path}/x.sqlite3")
        with pytest.raises(ConfigError, match=r"^database\.password_file: a SQLite database "
                                              r"takes no password"):
            load_config(path, environ={}, default_path=None)

    def test_the_password_reaches_the_engine_through_the_url_object(self,
                                                                     tmp_path: Path) -> None:
        """Characters that mean something in a URL's text (@ : / % ? #) arrive unchanged."""
        config = load_config(_mysql_config(tmp_path, _password_file(
            tmp_path, DB_PASSWORD.encode() + b"\n")), environ={}, default_path=None)
        db = Database(config.database)
        try:
            assert db.primary.url.password == DB_PASSWORD
            assert db.primary.url.username == "ex"
            assert DB_PASSWORD not in repr(db) + repr(db.primary)
        finally:
            db.dispose()


def test_the_contrib_file_loads_with_its_password_file(tmp_path: Path) -> None:
    """contrib/eximauthd.toml is valid as shipped, its password_file (here moved by the
    environment) read; the URL itself holds no password."""
    contrib = Path(__file__).resolve().parents[1] / "contrib" / "eximauthd.toml"
    assert "password_file = \"/etc/eximauthd/db.password\"" in contrib.read_text()
    secret = _password_file(tmp_path, b"Db-pass-1\n", 0o640)
    config = load_config(contrib, environ={"EXIMAUTHD_DATABASE_PASSWORD_FILE": str(secret)},
                         default_path=None)
    assert (config.database.url, config.database.password) == (
        "mysql+pymysql://eximauthd@127.0.0.1/mail", "Db-pass-1")


def test_every_setting_named_like_a_secret_is_marked_one() -> None:
    """config show prints whatever is not marked SECRET: a new key named like a credential
    must be marked (or be a file path, a column or a scheme name, which are not secrets)."""
    import dataclasses  # noqa: PLC0415

    from eximauthd.settings import SECRET  # noqa: PLC0415

    unmarked = []
    for section in dataclasses.fields(Config):
        if not isinstance(section.default_factory, type):  # source, found, origins
            continue
        for f in dataclasses.fields(section.default_factory):
            looks_secret = re.search(r"pass|pwd|token|secret|key|url", f.name)
            harmless = re.search(r"_(file|column|scheme)$", f.name)
            if looks_secret and not harmless and not f.metadata.get(SECRET):
                unmarked.append(f"{section.name}.{f.name}")
    assert unmarked == []
