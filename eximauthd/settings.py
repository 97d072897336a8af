"""Settings as values: one frozen dataclass per section of the configuration file.

Pure and free of I/O, so that every layer may take them; :mod:`eximauthd.config` reads a file
and the environment into them and validates them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigError

__all__ = [
    "ARGON2_VERIFIERS",
    "DEFAULT_TOKEN_FILE",
    "LEGACY_PASSWORD_SCHEMES",
    "LOADED",
    "SECRET",
    "CacheConfig",
    "Config",
    "ConfigSource",
    "DatabaseConfig",
    "DovecotAuthConfig",
    "EnabledRule",
    "HashingConfig",
    "HttpConfig",
    "LegacyConfig",
    "PolicyConfig",
    "PostfixPolicyConfig",
    "RateLimitConfig",
    "ServiceConfig",
    "SocketConfig",
    "ThrottleConfig",
    "mask_url",
]

DEFAULT_TOKEN_FILE = "eximauthd-http.token"  # noqa: S105 -- a file name, not a secret
# Field metadata keys.  SECRET: how `config show` may print the value ("value": never, "url":
# with its password masked).  LOADED: not a key of the file; filled in from another setting.
SECRET = "eximauthd.secret"  # noqa: S105 -- a metadata key, not a secret
LOADED = "eximauthd.loaded"
# [0-9], not \\d: \\d also matches other scripts' digits (U+0661), which int() accepts.
INTEGER_RE = re.compile(r"[+-]?[0-9]{1,18}")
# Query parameters that may carry a credential (PyMySQL takes ?password= and ?passwd=).
_SECRET_QUERY_KEY_RE = re.compile(r"pass|pwd|secret|token|key", re.IGNORECASE)
_ENABLED_RE = re.compile(r"[ \t]*(=|!=|<>|>=|<=|>|<)[ \t]*(-?[0-9]{1,18}|'[ -&(-~]*')[ \t]*")


def mask_url(url: str) -> str:
    """*url* with its password, and any query value that may be a credential, as ``***``.

    For logs, reprs and error messages: ``?password=`` is as secret as ``user:password@``.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "<invalid url>"
    if parsed.host and "@" in parsed.host:
        # A password with an unencoded "@" ends at its first "@": the rest parses as the host.
        parsed = parsed.set(host=parsed.host.rpartition("@")[2])
    text = parsed.set(query={}).render_as_string(hide_password=True)
    pairs = []
    for key, value in parsed.query.items():
        for item in value if isinstance(value, tuple) else (value,):
            shown = "***" if _SECRET_QUERY_KEY_RE.search(key) else quote_plus(item)
            pairs.append(f"{quote_plus(key)}={shown}")
    return f"{text}?{'&'.join(pairs)}" if pairs else text


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Where accounts live.  ``replica_url``, when set, serves reads; writes use ``url``.

    ``password`` is read from ``password_file`` when the configuration is loaded and given to
    both URLs' connections; it is not a key of the file (a password in the TOML is one in the URL).
    """

    url: str = field(default="sqlite:///eximauthd.sqlite3", metadata={SECRET: "url"})
    replica_url: str = field(default="", metadata={SECRET: "url"})
    connect_timeout: int = 3
    password_file: str = ""
    password: str = field(default="", repr=False, metadata={SECRET: "value", LOADED: True})
    # Tried in order after url when the node in use fails (docs/scaling.md); back to url when
    # it is usable again.
    failover_urls: tuple[str, ...] = field(default=(), metadata={SECRET: "url"})
    # How often the service checks the node in use and, away from url, the preferred ones.
    failover_check_seconds: int = 2

    def __repr__(self) -> str:
        # The URL may hold the database password: never print it.
        return (
            f"DatabaseConfig(url={mask_url(self.url)!r}, "
            f"replica_url={mask_url(self.replica_url) if self.replica_url else ''!r}, "
            f"connect_timeout={self.connect_timeout}, password_file={self.password_file!r}, "
            f"failover_urls={[mask_url(u) for u in self.failover_urls]!r}, "
            f"failover_check_seconds={self.failover_check_seconds})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class SocketConfig:
    """The Unix socket Exim's ``${readsocket}`` talks to."""

    path: str = "eximauthd.sock"
    group: str = ""
    mode: str = "0660"


@dataclass(frozen=True, slots=True)
class DovecotAuthConfig:
    """Dovecot's auth-client protocol, for Exim's ``dovecot`` driver and Postfix's SASL.

    A Unix socket at *path* (owned by *group*, *mode*); *listen* adds a loopback TCP
    ``HOST:PORT`` (the protocol has no authentication of its own: loopback only).
    """

    enabled: bool = False
    path: str = "eximauthd-dovecot.sock"
    group: str = ""
    mode: str = "0660"
    listen: str = ""


@dataclass(frozen=True, slots=True)
class PostfixPolicyConfig:
    """Postfix's policy delegation protocol (``check_policy_service``), for the relay rule.

    A Unix socket at *path* (owned by *group*, *mode*); *listen* adds a loopback TCP
    ``HOST:PORT`` (the protocol has no authentication of its own: loopback only).
    """

    enabled: bool = False
    path: str = "eximauthd-policy.sock"
    group: str = ""
    mode: str = "0660"
    listen: str = ""


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The local HTTP API (health, readiness, metrics, verify)."""

    enabled: bool = True
    listen: str = "127.0.0.1:8726"
    # The decision endpoints always need a bearer token: this one, or else the one in
    # token_file, which `serve` creates (mode 0600) when it does not exist.
    token: str = field(default="", repr=False, metadata={SECRET: "value"})
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
    # Which library verifies argon2id: "libsodium" (PyNaCl's wheels: AVX2/AVX-512 kernels, but
    # a fresh memory mapping, page-faulted in, for every hash), "argon2-cffi" (its memory is
    # reused from the allocator; as fast as libsodium's kernels only when argon2-cffi-bindings
    # was built for this CPU), or "auto": `serve` times both at start and keeps the faster.
    verify_with: str = "auto"


# The libraries that may verify argon2id, as hashing.verify_with names them (or "auto": serve
# times these, in this order, and on a tie keeps the first: the one tested by default).
ARGON2_VERIFIERS = ("libsodium", "argon2-cffi")


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
    return int(text) if INTEGER_RE.fullmatch(text) else None


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
    # A login's send-as grants are remembered this long, only to allow: a sender they do not
    # allow is looked up again before it is refused.  Off by default, as the AUTH cache is:
    # a removed grant may still be honoured for this long on a host the removal's FORGET did
    # not reach (another MX), where by default a removal holds at the next RCPT everywhere.
    grant_cache_seconds: int = 0


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Limits of ``eximauthd serve``."""

    # Password checks (argon2) at once; 0 means one per CPU.  The service runs twice as many
    # threads, so that database waits overlap the hashing.  libsodium releases the GIL.
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
    # A success's reservation is taken back with the other successes of this while, in one
    # statement (0: each at once, one more statement per login).
    release_delay_ms: int = 50
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


class ConfigSource(enum.Enum):
    """How the configuration file was found (or that there was none)."""

    ARGUMENT = "--config"
    ENVIRONMENT = "EXIMAUTHD_CONFIG"
    DEFAULT_PATH = "the default location"
    BUILT_IN = "no file"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration.

    ``source`` is the file read, or ``"built-in defaults"``; ``found`` says how it was found.
    ``origins`` pairs each key set by the file or the environment (``"database.url"``) with
    where it was set (``"file PATH"``, ``"environment VARIABLE"``); other keys are defaults.
    """

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
    dovecot_auth: DovecotAuthConfig = field(default_factory=DovecotAuthConfig)
    postfix_policy: PostfixPolicyConfig = field(default_factory=PostfixPolicyConfig)
    source: str = "built-in defaults"
    found: ConfigSource = ConfigSource.BUILT_IN
    origins: tuple[tuple[str, str], ...] = ()

    def origin(self, key: str) -> str:
        """Where *key* (``"section.key"``) was set: ``"default"`` unless the file or the
        environment set it."""
        return dict(self.origins).get(key, "default")


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
