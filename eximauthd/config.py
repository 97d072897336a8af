"""Reading the settings: a TOML file plus ``EXIMAUTHD_<SECTION>_<KEY>`` environment overrides.

Everything is parsed into the frozen dataclasses of :mod:`eximauthd.settings` and validated up
front, so a typo stops the program with one line naming the key instead of surfacing later as a
wrong decision.

The file is the one named by the caller (``--config``), else by ``$EXIMAUTHD_CONFIG``, else
:data:`DEFAULT_CONFIG_PATH` when it exists: an admin running ``eximauthd user add`` as root in
any directory reaches the production database.  With no file at all the embedded default
applies: a SQLite file and a socket in the working directory, which :func:`builtin_database_note`
puts into words for the messages that need them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .core.addresses import parse_address
from .core.limits import KINDS, parse_limits
from .errors import AddressError, ConfigError
from .settings import (
    ARGON2_VERIFIERS,
    INTEGER_RE,
    LEGACY_PASSWORD_SCHEMES,
    LOADED,
    CacheConfig,
    Config,
    ConfigSource,
    DatabaseConfig,
    DovecotAuthConfig,
    HashingConfig,
    HttpConfig,
    LegacyConfig,
    PolicyConfig,
    PostfixPolicyConfig,
    RateLimitConfig,
    ServiceConfig,
    SocketConfig,
    ThrottleConfig,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "MAX_PASSWORD_FILE_BYTES",
    "builtin_database_note",
    "load_config",
]

DEFAULT_CONFIG_PATH = "/etc/eximauthd/eximauthd.toml"
ENV_PREFIX = "EXIMAUTHD_"
# More than any database password; a larger file is not a password file.
MAX_PASSWORD_FILE_BYTES = 1024
# [hashing] verify_with: the libraries that verify argon2id, or "auto" (serve measures both).
VERIFY_WITH = ("auto", *ARGON2_VERIFIERS)
# Variables with the prefix that are not settings.
_ENV_NOT_SETTINGS = frozenset({"EXIMAUTHD_CONFIG"})

_SUPPORTED_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "mysql+pymysql", "mariadb+pymysql"})
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


_SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseConfig,
    "socket": SocketConfig,
    "http": HttpConfig,
    "hashing": HashingConfig,
    "legacy": LegacyConfig,
    "policy": PolicyConfig,
    "service": ServiceConfig,
    "throttle": ThrottleConfig,
    "ratelimit": RateLimitConfig,
    "cache": CacheConfig,
    "dovecot_auth": DovecotAuthConfig,
    "postfix_policy": PostfixPolicyConfig,
}


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None, *,
                default_path: str | os.PathLike[str] | None = DEFAULT_CONFIG_PATH) -> Config:
    """Read the configuration file and apply environment overrides.

    The file is *path* if given, else ``$EXIMAUTHD_CONFIG`` if set, else *default_path* if it
    exists (a dangling symlink or an unreadable directory there is an error, not "absent");
    with none of them the built-in defaults apply.  ``database.password_file`` is read here.

    :raises ConfigError: unreadable file, TOML syntax error, unknown section or key, wrong type or
        an invalid value; the message names the key.
    """
    env = os.environ if environ is None else environ
    found, chosen = _locate(path, env, default_path)
    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if chosen is not None:
        raw = _read_toml(Path(chosen), found)
        source = str(chosen)
    for section in raw:
        if section not in _SECTIONS:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: must be a table ([{section}])")
    _merge_environment(raw, env)
    origins: list[tuple[str, str]] = []
    built = {name: _build_section(name, cls, raw.get(name, {}), f"file {source}", origins)
             for name, cls in _SECTIONS.items()}
    config = Config(**built, source=source, found=found, origins=tuple(origins))
    _validate(config)
    return _with_password(config)


def _locate(path: str | os.PathLike[str] | None, env: Mapping[str, str],
            default_path: str | os.PathLike[str] | None,
            ) -> tuple[ConfigSource, str | os.PathLike[str] | None]:
    if path is not None:
        return ConfigSource.ARGUMENT, path
    if env.get("EXIMAUTHD_CONFIG"):
        return ConfigSource.ENVIRONMENT, env["EXIMAUTHD_CONFIG"]
    if default_path is not None and _present(default_path):
        return ConfigSource.DEFAULT_PATH, default_path
    return ConfigSource.BUILT_IN, None


def _present(path: str | os.PathLike[str]) -> bool:
    """Whether something is at *path*.  Only "no such entry" is absence: a production file
    behind a directory this user may not search must be reported, not replaced by defaults."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def builtin_database_note(config: Config) -> str | None:
    """Words saying that the database is the built-in SQLite default, where it is and why, for
    messages of commands that used it; None when ``database.url`` was set somewhere."""
    if config.origin("database.url") != "default":
        return None
    where = os.path.abspath(make_url(config.database.url).database or "")
    if config.found is ConfigSource.BUILT_IN:
        return (f"using the built-in default configuration: SQLite {where}; no "
                f"{DEFAULT_CONFIG_PATH}, no EXIMAUTHD_CONFIG, no --config")
    return (f"using the built-in default database: SQLite {where}; database.url is set "
            f"neither in {config.source} nor by EXIMAUTHD_DATABASE_URL")


def _read_toml(path: Path, found: ConfigSource) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        fix = (" (the default configuration file: run as a user who may read it, or name "
               "another with --config)" if found is ConfigSource.DEFAULT_PATH else "")
        raise ConfigError(f"{path}: cannot read: {exc.strerror}{fix}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}{_toml_hint(path, exc)}") from None


def _toml_hint(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    """The likely fix of the commonest TOML mistake here: ``mode = 0660``, a leading zero."""
    match = re.search(r"at line (\d+)", str(exc))
    try:
        line = path.read_text("utf-8", "replace").splitlines()[int(match.group(1)) - 1] \
            if match else ""
    except (OSError, IndexError):
        return ""
    if re.search(r"=\s*[+-]?0[0-9]", line):
        return ' (a number with a leading zero is not TOML: quote it, mode = "0660")'
    return ""


def _merge_environment(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_SETTINGS:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        # The longest section name that prefixes it: section names may hold "_" themselves
        # (EXIMAUTHD_DOVECOT_AUTH_PATH is [dovecot_auth] path).
        section = max((s for s in _SECTIONS if rest.startswith(s + "_")), key=len, default="")
        key = rest[len(section) + 1:] if section else ""
        if not section or not key:
            raise ConfigError(f"{name}: unknown setting (expected EXIMAUTHD_<SECTION>_<KEY>)")
        raw.setdefault(section, {})[key] = _EnvString(value, name)


class _EnvString(str):
    """A value from the environment: coerced to the field's type, errors name the variable."""

    variable: str

    def __new__(cls, value: str, variable: str) -> _EnvString:
        obj = super().__new__(cls, value)
        obj.variable = variable
        return obj


def _build_section(name: str, cls: type[Any], values: dict[str, Any], file_origin: str,
                   origins: list[tuple[str, str]]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if not f.metadata.get(LOADED)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        from_env = isinstance(value, _EnvString)
        where = value.variable if from_env else f"{name}.{key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(known))})")
        if (name, key) == ("socket", "mode") and type(value) is int:
            # 660 would read as octal and 0o660 as 432: both guesses, one of them wrong.
            raise ConfigError(f'socket.mode: write the mode as a quoted octal string, mode = '
                              f'"0660" (a TOML integer is read as decimal: {value} = 0o{value:o})')
        kwargs[key] = _coerce(where, value, hints[key])
        origins.append((f"{name}.{key}", f"environment {where}" if from_env else file_origin))
    return cls(**kwargs)


def _coerce(where: str, value: Any, expected: Any) -> Any:
    if isinstance(expected, types.UnionType):
        expected = next(t for t in typing.get_args(expected) if t is not type(None))
    if typing.get_origin(expected) is tuple:
        if isinstance(value, _EnvString):
            value = [item.strip() for item in str(value).split(",") if item.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    if isinstance(value, _EnvString):
        return _coerce_env(where, str(value), expected)
    # bool is an int in Python; a TOML `true` for an integer is still a mistake.
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {type(value).__name__}")
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {type(value).__name__}")
    if expected is str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    return value


def _coerce_env(where: str, value: str, expected: Any) -> Any:
    if expected is bool:
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected true or false, got {value[:32]!r}")
    if expected is int:
        # Not int() alone: it also takes "1_0" and other scripts' digits.
        if not INTEGER_RE.fullmatch(value.strip(" \t")):
            raise ConfigError(f"{where}: expected an integer, got {value[:32]!r}")
        return int(value)
    return value


def _validate(config: Config) -> None:
    _validate_database(config.database)
    _validate_socket(config.socket)
    _validate_dovecot_auth(config.dovecot_auth, config.socket)
    _validate_postfix_policy(config)
    _validate_http(config.http)
    _validate_hashing(config.hashing)
    _validate_policy(config.policy)
    _validate_service(config.service)
    _validate_abuse(config)
    if config.legacy.configured or any(
        getattr(config.legacy, f.name) != f.default for f in dataclasses.fields(LegacyConfig)
    ):
        _validate_legacy(config.legacy)


def _validate_url(key: str, url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # Not the URL itself in the message: it may hold the database password.
        raise ConfigError(f"{key}: not a valid database URL") from None
    if parsed.host and "@" in parsed.host:
        # SQLAlchemy ends the password at its first "@" and takes the rest as the host: the
        # password's tail would be shown and connected to as a host name.
        raise ConfigError(f"{key}: an '@' in the user or password must be written %40 (the "
                          "host after it would hold the rest of the password)")
    if parsed.drivername not in _SUPPORTED_DRIVERS:
        raise ConfigError(
            f"{key}: unsupported driver {parsed.drivername!r} "
            f"(use sqlite:///PATH or mysql+pymysql://USER:PASSWORD@HOST/DB)"
        )
    if parsed.drivername.startswith("sqlite") and not parsed.database:
        raise ConfigError(f"{key}: an in-memory SQLite database would lose every account")
    if not parsed.drivername.startswith("sqlite") and not parsed.database:
        raise ConfigError(f"{key}: the URL names no database")
    return parsed


def _validate_database(db: DatabaseConfig) -> None:
    _validate_url("database.url", db.url)
    if db.replica_url:
        _validate_url("database.replica_url", db.replica_url)
    if not 1 <= db.connect_timeout <= 60:
        raise ConfigError("database.connect_timeout: must be between 1 and 60 seconds")
    for i, url in enumerate(db.failover_urls):
        parsed = _validate_url(f"database.failover_urls[{i}]", url)
        if parsed.drivername.startswith("sqlite"):
            raise ConfigError(f"database.failover_urls[{i}]: failover needs MariaDB/MySQL "
                              "nodes, not SQLite files")
    if db.failover_urls and make_url(db.url).drivername.startswith("sqlite"):
        raise ConfigError("database.failover_urls: database.url is SQLite; failover needs "
                          "MariaDB/MySQL nodes (remove failover_urls or set url to a node)")
    if not 1 <= db.failover_check_seconds <= 60:
        raise ConfigError("database.failover_check_seconds: must be between 1 and 60 seconds")


def _validate_socket(sock: SocketConfig | DovecotAuthConfig | PostfixPolicyConfig,
                     key: str = "socket") -> None:
    if not sock.path:
        raise ConfigError(f"{key}.path: must not be empty")
    # sun_path holds 108 bytes including the terminating NUL on Linux.
    if len(os.fsencode(sock.path)) > 107:
        raise ConfigError(f"{key}.path: longer than a Unix socket path may be (107 bytes)")
    if not re.fullmatch(r"0?[0-7]{3}", sock.mode):
        raise ConfigError(f"{key}.mode: expected an octal mode like '0660', got {sock.mode!r}")
    if int(sock.mode, 8) & 0o007:
        raise ConfigError(f"{key}.mode: must not grant access to other users (last digit 0)")


def _validate_dovecot_auth(dovecot: DovecotAuthConfig, sock: SocketConfig) -> None:
    _validate_socket(dovecot, "dovecot_auth")
    if dovecot.enabled and os.path.abspath(dovecot.path) == os.path.abspath(sock.path):
        raise ConfigError("dovecot_auth.path: must differ from socket.path (two protocols)")
    if not dovecot.listen:
        return
    host, sep, port = dovecot.listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"dovecot_auth.listen: expected HOST:PORT, got {dovecot.listen!r}")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(f"dovecot_auth.listen: host must be an IP address, got {host!r}"
                          ) from None
    # The protocol has no authentication: whoever reaches the port may test passwords.
    if not address.is_loopback:
        raise ConfigError("dovecot_auth.listen: only a loopback address (127.0.0.1, [::1]); "
                          "the protocol has no authentication of its own")


def _validate_postfix_policy(config: Config) -> None:
    policy = config.postfix_policy
    _validate_socket(policy, "postfix_policy")
    if policy.enabled:
        taken = [config.socket.path] + ([config.dovecot_auth.path]
                                         if config.dovecot_auth.enabled else [])
        if os.path.abspath(policy.path) in {os.path.abspath(p) for p in taken}:
            raise ConfigError("postfix_policy.path: must differ from socket.path and "
                              "dovecot_auth.path (one protocol per socket)")
    if not policy.listen:
        return
    host, sep, port = policy.listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"postfix_policy.listen: expected HOST:PORT, got {policy.listen!r}")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(f"postfix_policy.listen: host must be an IP address, got {host!r}"
                          ) from None
    # The protocol has no authentication: whoever reaches the port may ask as any login.
    if not address.is_loopback:
        raise ConfigError("postfix_policy.listen: only a loopback address (127.0.0.1, [::1]); "
                          "the protocol has no authentication of its own")


def _validate_http(http: HttpConfig) -> None:
    host, sep, port = http.listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"http.listen: expected HOST:PORT, got {http.listen!r}")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(f"http.listen: host must be an IP address, got {host!r}") from None
    # Clients on other hosts need the token: name it, rather than have one generated in
    # whatever directory the service happened to start in.
    if not address.is_loopback and not (http.token or http.token_file):
        raise ConfigError("http.listen: a non-loopback address needs http.token or "
                          "http.token_file to be set")


def _in_ranges(checks: list[tuple[str, int, int, int]]) -> None:
    """Refuse the first ``(key, value, low, high)`` whose value is outside ``low..high``."""
    for key, value, low, high in checks:
        if not low <= value <= high:
            raise ConfigError(f"{key}: {value} is outside {low}..{high}")


def _validate_hashing(h: HashingConfig) -> None:
    _in_ranges([
        ("hashing.time_cost", h.time_cost, 1, h.max_time_cost),
        ("hashing.parallelism", h.parallelism, 1, h.max_parallelism),
        ("hashing.memory_cost", h.memory_cost, 8 * h.parallelism, h.max_memory_cost),
        ("hashing.hash_len", h.hash_len, 16, 64),
        ("hashing.salt_len", h.salt_len, 16, 64),
        ("hashing.max_memory_cost", h.max_memory_cost, 8, 4 * 1024 * 1024),
        ("hashing.max_time_cost", h.max_time_cost, 1, 1000),
        ("hashing.max_parallelism", h.max_parallelism, 1, 255),
    ])
    if h.verify_with not in VERIFY_WITH:
        raise ConfigError(f"hashing.verify_with: expected one of {', '.join(VERIFY_WITH)}, "
                          f"got {h.verify_with[:20]!r}")


def _validate_policy(policy: PolicyConfig) -> None:
    _in_ranges([("policy.grant_cache_seconds", policy.grant_cache_seconds, 0, 3600)])
    for domain in policy.strict_domains:
        if not _is_lower_case_domain(domain):
            raise ConfigError(
                f"policy.strict_domains: {domain[:40]!r} is not a lower-case domain name"
            )


def _is_lower_case_domain(text: str) -> bool:
    """Whether *text* is a domain as an account address has it, in its canonical lower case."""
    try:
        return parse_address("postmaster@" + text).domain == text
    except AddressError:
        return False


def _validate_service(service: ServiceConfig) -> None:
    _in_ranges([
        ("service.workers", service.workers, 0, 256),
        ("service.request_timeout_ms", service.request_timeout_ms, 50, 60000),
        ("service.read_timeout_ms", service.read_timeout_ms, 50, 60000),
        ("service.max_pending", service.max_pending, 1, 100000),
    ])
    if service.log_format not in {"text", "json"}:
        raise ConfigError(f"service.log_format: expected 'text' or 'json', got "
                          f"{service.log_format[:20]!r}")


def _validate_abuse(config: Config) -> None:
    t, r, c = config.throttle, config.ratelimit, config.cache
    _in_ranges([
        ("throttle.window_seconds", t.window_seconds, 1, 86400),
        ("throttle.max_failures_per_ip", t.max_failures_per_ip, 1, 1_000_000),
        ("throttle.max_failures_per_user", t.max_failures_per_user, 1, 1_000_000),
        ("throttle.ipv4_prefix", t.ipv4_prefix, 8, 32),
        ("throttle.ipv6_prefix", t.ipv6_prefix, 16, 128),
        # The delay is spent inside Exim's readsocket timeout: keep it well below 5 s.
        ("throttle.failure_delay_ms", t.failure_delay_ms, 0, 2000),
        # Padded inside the request timeout's budget too (capped at 0.6 of it when applied).
        ("throttle.failure_floor_ms", t.failure_floor_ms, 0, 2000),
        ("throttle.trusted_network_seconds", t.trusted_network_seconds, 0, 90 * 86400),
        # A success counts against the limits until then: keep it short.
        ("throttle.release_delay_ms", t.release_delay_ms, 0, 1000),
        ("ratelimit.sync_interval_ms", r.sync_interval_ms, 50, 60_000),
        ("ratelimit.max_staleness_seconds", r.max_staleness_seconds, 1, 3600),
        ("cache.ttl_seconds", c.ttl_seconds, 0, 86400),
        ("cache.max_entries", c.max_entries, 1, 10_000_000),
        ("cache.revalidate_seconds", c.revalidate_seconds, 1, 3600),
    ])
    for network in t.exempt_networks:
        try:
            ipaddress.ip_network(network, strict=True)
        except ValueError:
            raise ConfigError(f"throttle.exempt_networks: {network[:64]!r} is not a network "
                              "such as 192.0.2.10/32 or 2001:db8:1::/48 (no host bits set)"
                              ) from None
    if r.max_staleness_seconds * 1000 < 2 * r.sync_interval_ms:
        raise ConfigError("ratelimit.max_staleness_seconds: must cover at least two "
                          "sync_interval_ms")
    for kind in KINDS:
        try:
            parse_limits(getattr(r, kind))
        except ConfigError as exc:
            raise ConfigError(f"ratelimit.{kind}: {exc}") from None


def _validate_legacy(legacy: LegacyConfig) -> None:
    if not legacy.table:
        raise ConfigError("legacy.table: required when any legacy.* key is set")
    if legacy.address_column and (legacy.local_part_column or legacy.domain_column):
        raise ConfigError(
            "legacy.address_column: set either address_column or local_part_column + "
            "domain_column, not both"
        )
    if not legacy.address_column and not (legacy.local_part_column and legacy.domain_column):
        raise ConfigError(
            "legacy.address_column: set address_column, or both local_part_column and "
            "domain_column"
        )
    for key in ("table", "address_column", "local_part_column", "domain_column",
                "password_column", "enabled_column"):
        value = getattr(legacy, key)
        if value and not _IDENTIFIER_RE.fullmatch(value):
            raise ConfigError(f"legacy.{key}: {value[:40]!r} is not a plain SQL identifier")
    if legacy.password_scheme not in LEGACY_PASSWORD_SCHEMES:
        raise ConfigError(
            f"legacy.password_scheme: {legacy.password_scheme[:40]!r} is not one of "
            f"{', '.join(LEGACY_PASSWORD_SCHEMES)}"
        )
    if legacy.enabled_column:
        rule = legacy.enabled_rule
        for key in ("enabled_value", "disabled_value"):
            raw = getattr(legacy, key)
            if isinstance(rule.value, int) and not re.fullmatch(r"-?[0-9]+", raw):
                raise ConfigError(f"legacy.{key}: must be an integer like enabled_when")
            expected = key == "enabled_value"
            if rule.matches(raw) is not expected:
                raise ConfigError(
                    f"legacy.{key}: {raw!r} does not satisfy enabled_when "
                    f"{'' if expected else 'negated '}{legacy.enabled_when!r}"
                )


def _with_password(config: Config) -> Config:
    """*config* with ``database.password`` read from ``database.password_file``, if set."""
    db = config.database
    if not db.password_file:
        return config
    named = [("url", db.url), ("replica_url", db.replica_url),
             *((f"failover_urls[{i}]", u) for i, u in enumerate(db.failover_urls))]
    for key, value in named:
        if value and _url_has_password(value):
            raise ConfigError(f"database.password_file: database.{key} holds a password too "
                              f"(keep it in one place: remove it from the URL)")
    if make_url(db.url).drivername.startswith("sqlite"):
        raise ConfigError("database.password_file: a SQLite database takes no password "
                          "(unset password_file, or set database.url to a MariaDB/MySQL URL)")
    password = _read_password_file(db.password_file)
    return dataclasses.replace(config, database=dataclasses.replace(db, password=password))


def _url_has_password(url: str) -> bool:
    parsed = make_url(url)  # validated already
    # PyMySQL also takes the password as ?password= or ?passwd=.
    return parsed.password is not None or any(
        key.lower() in {"password", "passwd"} for key in parsed.query)


def _read_password_file(path: str) -> str:
    """The first line of *path*, without its newline.

    Only a regular file (not a symlink, not a FIFO that would block start-up) that other users
    cannot read is taken: a symlink could lend the file's trust to anything it points at, say a
    shadow file, whose first line would then be sent to the database server.  The group may read
    it (the service's group).  The content never appears in an error.
    """
    where = f"database.password_file: {path}"
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{where}: is a symlink (point database.password_file at the file "
                          "itself)")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{where}: is not a regular file")
    # O_NOFOLLOW and O_NONBLOCK: a symlink or FIFO swapped in after lstat() fails instead of
    # being followed or blocking; the checks below are made on what was opened.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{where}: is not a regular file")
        if info.st_mode & 0o007:
            raise ConfigError(f"{where}: is accessible to every local user (mode "
                              f"{stat.S_IMODE(info.st_mode):04o}; chmod o-rwx {path})")
        raw = os.read(fd, MAX_PASSWORD_FILE_BYTES + 3)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    return _password_from_bytes(raw, where)


def _password_from_bytes(raw: bytes, where: str) -> str:
    """*raw* without one trailing LF or CRLF, if it is one line of UTF-8.  Pure."""
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise ConfigError(f"{where}: is empty")
    if len(raw) > MAX_PASSWORD_FILE_BYTES:
        raise ConfigError(f"{where}: holds more than {MAX_PASSWORD_FILE_BYTES} bytes "
                          "(one line: the password)")
    if b"\n" in raw or b"\r" in raw:
        raise ConfigError(f"{where}: holds more than one line (only one trailing newline is "
                          "stripped)")
    if b"\0" in raw:
        raise ConfigError(f"{where}: holds a NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: is not UTF-8") from None
