"""eximauthd's own tables (SQLAlchemy Core), the single source Alembic's first revision mirrors.

Every name carries the ``eximauthd_`` prefix: the tables often share a database with a mail
system's own ``users`` table (the seed's), and must never collide with it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects import mysql

__all__ = [
    "ADDRESS_LENGTH",
    "HASH_LENGTH",
    "TAG_LENGTH",
    "auth_attempts",
    "grants",
    "known_clients",
    "metadata",
    "rate_counters",
    "user_limits",
    "users",
]

ADDRESS_LENGTH = 320  # 64 + 1 + 255
HASH_LENGTH = 255
TAG_LENGTH = 32

metadata = MetaData()

# A binary collation makes the compare-and-swap exact on MySQL (imported rows may hold
# plaintext or legacy values until they are upgraded, so not ASCII-only).
_Hash = String(HASH_LENGTH).with_variant(
    mysql.VARCHAR(HASH_LENGTH, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)


def _ascii(length: int) -> String:
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="ascii", collation="ascii_bin"), "mysql", "mariadb")


# Addresses and domains compare byte for byte on MySQL too (revision 0004):
# a caseless collation would call alicé, ALICE and "alice " equal to alice in the unique
# indexes.  Who a row is, is still decided in Python (eximauthd.db.accounts), whatever
# the collation.
_Address = String(ADDRESS_LENGTH).with_variant(
    mysql.VARCHAR(ADDRESS_LENGTH, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)
_Domain = String(255).with_variant(
    mysql.VARCHAR(255, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)

users = Table(
    "eximauthd_users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Canonical (lower-case) local@domain, see eximauthd.core.addresses.
    Column("address", _Address, nullable=False, unique=True),
    Column("domain", _Domain, nullable=False, index=True),
    Column("password_hash", _Hash, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    Column("updated_at", DateTime, nullable=False, server_default=func.now()),
)

# Send-as grants: `user_address` may use envelope sender `sender`, which is either an address
# or "@domain" for every address of that domain.
grants = Table(
    "eximauthd_grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_address", _Address, nullable=False, index=True),
    Column("sender", _Address, nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    UniqueConstraint("user_address", "sender", name="uq_eximauthd_grants_user_sender"),
)

# Password checks per client network and per user: one row per distinct (subject, keyed digest
# of user and password), reserved *before* the check, so concurrent guesses (on one instance or
# many) cannot all pass a limit they each read as not reached.  A success deletes its rows; a
# refused check deletes the row it reserved; a failure keeps it until the window has passed.
# ASCII binary columns on MySQL: subjects are canonical addresses and networks, compared
# byte-exact, never by a collation.
auth_attempts = Table(
    "eximauthd_auth_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scope", _ascii(8), nullable=False),  # "ip" or "user"
    Column("subject", _ascii(ADDRESS_LENGTH), nullable=False),
    Column("tag", _ascii(TAG_LENGTH), nullable=False),
    # Random per request: tells the request that reserved (or renewed) a row from one that
    # found it there, so a refused request deletes only what it added.
    Column("nonce", _ascii(TAG_LENGTH), nullable=False),
    # Indexed: the count and pruning read by it.
    Column("attempted_at", DateTime, nullable=False, index=True),
    UniqueConstraint("scope", "subject", "tag", name="uq_eximauthd_auth_attempts_key"),
)

# Networks (client IP /32, IPv6 /64) a user logged in from successfully: a user locked out by
# failures elsewhere still gets in from them (an attacker must not lock the owner out).
known_clients = Table(
    "eximauthd_known_clients",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", _Address, nullable=False),
    Column("network", String(64), nullable=False),
    Column("last_success_at", DateTime, nullable=False, index=True),
    UniqueConstraint("address", "network", name="uq_eximauthd_known_clients_address_network"),
)

# Outbound counts per user, kind ("recipients" or "messages") and fixed window: `bucket` is
# floor(epoch seconds / window_seconds).  Each instance adds its counts in batches; a row can be
# deleted once `expires_at` (epoch seconds) has passed, i.e. once it is no longer the previous
# window either.
rate_counters = Table(
    "eximauthd_rate_counters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", _Address, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("window_seconds", Integer, nullable=False),
    Column("bucket", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    UniqueConstraint("address", "kind", "window_seconds", "bucket",
                     name="uq_eximauthd_rate_counters_key"),
)

# Per-user outbound limits that replace the configured ones of the same kind.  A row with
# window_seconds = 0 means "no limit of this kind" for that user.
user_limits = Table(
    "eximauthd_user_limits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", _Address, nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("window_seconds", Integer, nullable=False),
    Column("maximum", Integer, nullable=False),
    UniqueConstraint("address", "kind", "window_seconds", name="uq_eximauthd_user_limits_key"),
)
