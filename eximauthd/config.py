"""Settings: a TOML file plus ``EXIMAUTHD_<SECTION>_<KEY>`` environment overrides.

Everything is parsed into frozen dataclasses and validated up front, so a typo stops the program
with one line naming the key instead of surfacing later as a wrong decision.  With no file at all
the embedded default applies: a SQLite file and a socket in the working directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigError
from .limits import KINDS, parse_limits

__all__ = [
    "LEGACY_PASSWORD_SCHEMES",
    "CacheConfig",
    "Config",
    "DatabaseConfig",
    "EnabledRule",
    "HashingConfig",
    "HttpConfig",
    "LegacyConfig",
    "PolicyConfig",
    "RateLimitConfig",
    "ServiceConfig",
    "SocketConfig",
    "ThrottleConfig",
    "load_config",
    "mask_url",
]

ENV_PREFIX = "EXIMAUTHD_"
DEFAULT_TOKEN_FILE = "eximauthd-http.token"  # noqa: S105 -- a file name, not a secret
# Variables with the prefix that are not settings.
_ENV_NOT_SETTINGS = frozenset({"EXIMAUTHD_CONFIG"})

_SUPPORTED_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "mysql+pymysql", "mariadb+pymysql"})
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# [0-9], not \\d: \\d also matches other scripts' digits (U+0661), which int() accepts.
_ENABLED_RE = re.compile(r"[ \t]*(=|!=|<>|>=|<=|>|<)[ \t]*(-?[0-9]{1,18}|'[ -&(-~]*')[ \t]*")
_INTEGER_RE = re.compile(r"[+-]?[0-9]{1,18}")
# Query parameters that may carry a credential (PyMySQL takes ?password= and ?passwd=).
_SECRET_QUERY_KEY_RE = re.compile(r"pass|pwd|secret|token|key", re.IGNORECASE)


def mask_url(url: str) -> str:
    """*url* with its password, and any query value that may be a credential, as ``***``.

    For logs, reprs and error messages: ``?password=`` is as secret as ``user:password@``.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "<invalid url>"
    text = parsed.set(query={}).render_as_string(hide_password=True)
    pairs = []
    for key, value in parsed.query.items():
        for item in value if isinstance(value, tuple) else (value,):
            shown = "***" if _SECRET_QUERY_KEY_RE.search(key) else quote_plus(item)
            pairs.append(f"{quote_plus(key)}={shown}")
    return f"{text}?{'&'.join(pairs)}" if pairs else text


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Where accounts live.  ``replica_url``, when set, serves reads; writes use ``url``."""

    url: str = "sqlite:///eximauthd.sqlite3"
    replica_url: str = ""
    connect_timeout: int = 3

    def __repr__(self) -> str:
        # The URL may hold the database password: never print it.
        return (
            f"DatabaseConfig(url={mask_url(self.url)!r}, "
            f"replica_url={mask_url(self.replica_url) if self.replica_url else ''!r}, "
            f"connect_timeout={self.connect_timeout})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class SocketConfig:
    """The Unix socket Exim's ``${readsocket}`` talks to."""

    path: str = "eximauthd.sock"
    group: str = ""
    mode: str = "0660"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The local HTTP API (health, readiness, metrics, verify)."""

    enabled: bool = True
    listen: str = "127.0.0.1:8726"
    # The decision endpoints always need a bearer token: this one, or else the one in
    # token_file, which `serve` creates (mode 0600) when it does not exist.
    token: str = field(default="", repr=False)
    # Empty: DEFAULT_TOKEN_FILE, relative like the embedded default's database and socket.
    token_file: str = ""

    @property
    def token_path(self) -> str:
        """The token file ``serve`` reads or creates when ``token`` is empty."""
        return self.token_file or DEFAULT_TOKEN_FILE


@dataclass(frozen=True, slots=True)
class HashingConfig:
    """argon2id parameters for new hashes and the ceiling for stored ones.

    Pinned here rather than taken from argon2-cffi, whose defaults change between releases.  The
    default is OWASP's minimum (19 MiB, t=2, p=1): SMTP clients authenticate on every connection,
    so the cost multiplies with the connection rate.  Costs are in KiB and iterations, as argon2.
    """

    memory_cost: int = 19456
    time_cost: int = 2
    parallelism: int = 1
    hash_len: int = 32
    salt_len: int = 16
    # A stored hash asking for more than this is refused unverified: a hostile or corrupt row
    # with m=4 GiB must not be able to take the host down.
    max_memory_cost: int = 262144
    max_time_cost: int = 16
    max_parallelism: int = 8
    # Write new hashes as "{ARGON2ID}$argon2id$..." so one column can serve Dovecot too.
    dovecot_prefix: bool = False
    # Accept stored plaintext (bare or {PLAIN}/{CLEARTEXT}) until it is migrated.
    allow_plaintext: bool = True


@dataclass(frozen=True, slots=True)
class EnabledRule:
    """``enabled_when = "> 0"``: the comparison that makes an account enabled.

    The old inline SQL compared under MySQL's rules (a caseless PAD SPACE collation, strings
    converted to numbers); Python's ``==`` and ``int()`` are not those rules, and where they
    differ the answer must be "not enabled", never "enabled" (docs/configuration.md has the
    truth table):

    * an integer rule accepts an ``int`` (``True``/``False`` as 1/0) or text that is, after
      ASCII blanks are stripped, ``[+-]?[0-9]+``; ``"1_0"``, U+0661, ``"1.0"``, ``"abc"`` are
      not enabled whatever the operator;
    * a string rule compares *folded* forms (trailing spaces removed, ASCII upper case made
      lower) of the stored value and of the rule's literal, and only stored text of printable
      ASCII: a collation also equates accented letters (``'Ñ' = 'n'``), which a negative rule
      (``!= 'n'``) would otherwise read as enabled;
    * ``None`` (SQL NULL) and an empty (or all-blank) value are never enabled.
    """

    operator: str
    value: int | str

    def matches(self, stored: object) -> bool:
        """Apply the rule to a value read from the database; see the class doc."""
        if isinstance(self.value, int):
            number = _stored_integer(stored)
            return number is not None and _compare(number, self.value, self.operator)
        text = _stored_text(stored)
        return text is not None and _compare(text, fold_enabled_text(self.value), self.operator)


def fold_enabled_text(text: str) -> str:
    """*text* as a caseless PAD SPACE collation sees it, for printable ASCII: trailing spaces
    dropped, A-Z made lower case.  Pure."""
    return text.rstrip(" ").translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PRINTABLE_ASCII_RE = re.compile(r"[ -~]+")


def _stored_integer(stored: object) -> int | None:
    if isinstance(stored, int):  # bool included: MySQL's TRUE is 1
        return int(stored)
    text = _decoded(stored)
    if text is None:
        return None
    text = text.strip(" \t\r\n")
    return int(text) if _INTEGER_RE.fullmatch(text) else None


def _stored_text(stored: object) -> str | None:
    if isinstance(stored, bool):
        stored = int(stored)
    if isinstance(stored, int):
        stored = str(stored)
    text = _decoded(stored)
    if text is None or not _PRINTABLE_ASCII_RE.fullmatch(text):
        return None
    folded = fold_enabled_text(text)
    return folded or None


def _decoded(stored: object) -> str | None:
    if isinstance(stored, str):
        return stored
    if isinstance(stored, bytes | bytearray):
        try:
            return bytes(stored).decode("ascii")
        except UnicodeDecodeError:
            return None
    return None


def _compare(left: Any, right: Any, operator: str) -> bool:
    result: bool
    match operator:
        case "=":
            result = left == right
        case "!=" | "<>":
            result = left != right
        case ">":
            result = left > right
        case ">=":
            result = left >= right
        case "<":
            result = left < right
        case _:
            result = left <= right
    return result


@dataclass(frozen=True, slots=True)
class LegacyConfig:
    """Map eximauthd onto an existing table instead of its own ``eximauthd_users``.

    Name either ``address_column`` or both ``local_part_column`` and ``domain_column``.
    """

    table: str = ""
    address_column: str = ""
    local_part_column: str = ""
    domain_column: str = ""
    password_column: str = "password"  # noqa: S105 -- a column name, not a secret
    enabled_column: str = ""
    enabled_when: str = "> 0"
    # What `user add`/`user enable` and `user disable` write into enabled_column.
    enabled_value: str = "1"
    disabled_value: str = "0"
    # What a bare password value (no {SCHEME} prefix, no $id$) is: "auto" takes it as plaintext
    # unless it is shaped like a hash, which it refuses (see LEGACY_PASSWORD_SCHEMES).
    password_scheme: str = "auto"  # noqa: S105 -- a scheme name, not a secret

    @property
    def configured(self) -> bool:
        return bool(self.table)

    @property
    def enabled_rule(self) -> EnabledRule:
        return _parse_enabled_rule(self.enabled_when)


# The values of legacy.password_scheme (eximauthd.hashing.bare_scheme maps them to schemes).
LEGACY_PASSWORD_SCHEMES = ("auto", "plain", "md5-hex", "sha1-hex", "sha256-hex", "sha512-hex",
                           "mysql-native", "mysql323-hex", "des-crypt")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Relay policy.  By default a sender in the login's own domain may relay."""

    # Domains whose users may relay only with their own address as envelope sender (as
    # Postfix's reject_authenticated_sender_login_mismatch); send-as grants still apply.
    strict_domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Limits of ``eximauthd serve``."""

    # Threads for argon2 and database work; 0 means one per CPU.  argon2-cffi releases the GIL.
    workers: int = 0
    # Answer "defer" after this long: below Exim's readsocket timeout (EXIMAUTHD_TIMEOUT, 5s),
    # so Exim gets a clean temporary failure instead of a timeout.
    request_timeout_ms: int = 3000
    # Time a client has to send its request line.
    read_timeout_ms: int = 1000
    # Requests waiting for or holding a worker; beyond this, answer "defer overloaded" at once.
    max_pending: int = 64
    log_format: str = "text"


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    """Brute-force throttling of AUTH, counted in the shared database (docs/security.md)."""

    enabled: bool = True
    # Fixed window in which failures are counted; a subject over its limit gets "no" without
    # a password check until its window ends.
    window_seconds: int = 900
    max_failures_per_ip: int = 10
    max_failures_per_user: int = 10
    # Failures from one client are counted per network: a /64 is one IPv6 host in practice.
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    # Networks (CIDR) whose own limit does not apply: a webmail host or a NAT gateway that
    # submits for many users, which anyone could otherwise lock out for all of them.  The user
    # limit still applies to every login from there.
    exempt_networks: tuple[str, ...] = ()
    # Wait this long before answering a failed AUTH (slows one connection's guessing).
    failure_delay_ms: int = 0
    # Every failed AUTH that looked at an account lasts at least this long, and at least as
    # long as the costliest password check of the last 10 minutes (0: that learnt floor only).
    failure_floor_ms: int = 0
    # A network a user logged in from successfully within this time is not locked out by
    # failures counted against that user elsewhere (0: no such exemption).
    trusted_network_seconds: int = 604800
    # File holding the key for the digest of wrong passwords ("the same wrong password counts
    # once"); give every instance the same file.  Empty: a random key per process.
    secret_file: str = ""


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Per-user outbound limits on RELAY, shared across instances (docs/security.md)."""

    enabled: bool = True
    # "COUNT/WINDOW" with WINDOW in s, m, h or d: every window applies at once.
    recipients: tuple[str, ...] = ("1000/1h", "5000/1d")
    messages: tuple[str, ...] = ("300/1h", "2000/1d")
    # How often an instance adds its counts to the database and reads the others' back.
    sync_interval_ms: int = 1000
    # Counts not synchronised for this long: RELAY answers "defer" (the database is gone).
    max_staleness_seconds: int = 30


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Positive AUTH cache (off when ttl_seconds = 0).  Keys are HMACs, never passwords."""

    ttl_seconds: int = 0
    max_entries: int = 10000
    # How often cached users' rows are re-read, so a change made elsewhere (another host, a
    # panel writing the table) ends their cached logins within this time.
    revalidate_seconds: int = 2


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    socket: SocketConfig = field(default_factory=SocketConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    hashing: HashingConfig = field(default_factory=HashingConfig)
    legacy: LegacyConfig = field(default_factory=LegacyConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    source: str = "built-in defaults"


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
}


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read *path* (or ``$EXIMAUTHD_CONFIG``, or nothing) and apply environment overrides.

    :raises ConfigError: unreadable file, TOML syntax error, unknown section or key, wrong type or
        an invalid value; the message names the key.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get("EXIMAUTHD_CONFIG"):
        path = env["EXIMAUTHD_CONFIG"]
    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        raw = _read_toml(Path(path))
        source = str(path)
    for section in raw:
        if section not in _SECTIONS:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: must be a table ([{section}])")
    _merge_environment(raw, env)
    built = {name: _build_section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    config = Config(**built, source=source)
    _validate(config)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _merge_environment(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_SETTINGS:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigError(f"{name}: unknown setting (expected EXIMAUTHD_<SECTION>_<KEY>)")
        raw.setdefault(section, {})[key] = _EnvString(value, name)


class _EnvString(str):
    """A value from the environment: coerced to the field's type, errors name the variable."""

    variable: str

    def __new__(cls, value: str, variable: str) -> _EnvString:
        obj = super().__new__(cls, value)
        obj.variable = variable
        return obj


def _build_section(name: str, cls: type[Any], values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        where = value.variable if isinstance(value, _EnvString) else f"{name}.{key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(where, value, hints[key])
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
        if not _INTEGER_RE.fullmatch(value.strip(" \t")):
            raise ConfigError(f"{where}: expected an integer, got {value[:32]!r}")
        return int(value)
    return value


def _parse_enabled_rule(text: str) -> EnabledRule:
    match = _ENABLED_RE.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"legacy.enabled_when: expected an operator and a value such as \"> 0\" or "
            f"\"= 'y'\", got {text[:40]!r}"
        )
    operator, literal = match.groups()
    if literal.startswith("'") and operator not in {"=", "!=", "<>"}:
        # The database orders text by its collation (MariaDB's default folds to upper case, so
        # "_" sorts after "A" there and before "a" here): only equality means the same in both.
        raise ConfigError(f"legacy.enabled_when: {operator} compares text in the database's "
                          f"collation order, which eximauthd cannot reproduce; use = or != with "
                          f"a text value, e.g. \"= 'y'\"")
    value: int | str = literal[1:-1] if literal.startswith("'") else int(literal)
    return EnabledRule(operator, value)


def _validate(config: Config) -> None:
    _validate_database(config.database)
    _validate_socket(config.socket)
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


def _validate_socket(sock: SocketConfig) -> None:
    if not sock.path:
        raise ConfigError("socket.path: must not be empty")
    # sun_path holds 108 bytes including the terminating NUL on Linux.
    if len(os.fsencode(sock.path)) > 107:
        raise ConfigError("socket.path: longer than a Unix socket path may be (107 bytes)")
    if not re.fullmatch(r"0?[0-7]{3}", sock.mode):
        raise ConfigError(f"socket.mode: expected an octal mode like '0660', got {sock.mode!r}")
    if int(sock.mode, 8) & 0o007:
        raise ConfigError("socket.mode: must not grant access to other users (last digit 0)")


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


def _validate_hashing(h: HashingConfig) -> None:
    checks = [
        ("hashing.time_cost", h.time_cost, 1, h.max_time_cost),
        ("hashing.parallelism", h.parallelism, 1, h.max_parallelism),
        ("hashing.memory_cost", h.memory_cost, 8 * h.parallelism, h.max_memory_cost),
        ("hashing.hash_len", h.hash_len, 16, 64),
        ("hashing.salt_len", h.salt_len, 16, 64),
        ("hashing.max_memory_cost", h.max_memory_cost, 8, 4 * 1024 * 1024),
        ("hashing.max_time_cost", h.max_time_cost, 1, 1000),
        ("hashing.max_parallelism", h.max_parallelism, 1, 255),
    ]
    for key, value, low, high in checks:
        if not low <= value <= high:
            raise ConfigError(f"{key}: {value} is outside {low}..{high}")


def _validate_policy(policy: PolicyConfig) -> None:
    for domain in policy.strict_domains:
        if not _DOMAIN_RE.fullmatch(domain) or domain != domain.lower():
            raise ConfigError(
                f"policy.strict_domains: {domain[:40]!r} is not a lower-case domain name"
            )


def _validate_service(service: ServiceConfig) -> None:
    checks = [
        ("service.workers", service.workers, 0, 256),
        ("service.request_timeout_ms", service.request_timeout_ms, 50, 60000),
        ("service.read_timeout_ms", service.read_timeout_ms, 50, 60000),
        ("service.max_pending", service.max_pending, 1, 100000),
    ]
    for key, value, low, high in checks:
        if not low <= value <= high:
            raise ConfigError(f"{key}: {value} is outside {low}..{high}")
    if service.log_format not in {"text", "json"}:
        raise ConfigError(f"service.log_format: expected 'text' or 'json', got "
                          f"{service.log_format[:20]!r}")


def _validate_abuse(config: Config) -> None:
    t, r, c = config.throttle, config.ratelimit, config.cache
    checks = [
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
        ("ratelimit.sync_interval_ms", r.sync_interval_ms, 50, 60_000),
        ("ratelimit.max_staleness_seconds", r.max_staleness_seconds, 1, 3600),
        ("cache.ttl_seconds", c.ttl_seconds, 0, 86400),
        ("cache.max_entries", c.max_entries, 1, 10_000_000),
        ("cache.revalidate_seconds", c.revalidate_seconds, 1, 3600),
    ]
    for key, value, low, high in checks:
        if not low <= value <= high:
            raise ConfigError(f"{key}: {value} is outside {low}..{high}")
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
