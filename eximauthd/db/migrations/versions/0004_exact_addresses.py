"""Address columns compare byte for byte on MySQL/MariaDB (utf8mb4_bin).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

Defence in depth: eximauthd decides who a row is in Python, byte for byte, whatever the
collation (eximauthd.db.accounts).  A caseless collation still let a look-alike row (``alicé``,
``ALICE``, ``alice ``) block the real address in a unique index, or share its counters.
Before the change, ASCII rows of eximauthd_users and eximauthd_grants are lower-cased: they
matched caselessly until now and keep matching (the unique indexes were caseless, so lowering
cannot collide).  SQLite compares bytes already: nothing to do there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_MYSQL = {"mysql", "mariadb"}

# (table, column, length): every column holding an address or a domain.  (Throttle subjects
# are in eximauthd_auth_attempts, ASCII binary since revision 0003.)
_COLUMNS = [
    ("eximauthd_users", "address", 320),
    ("eximauthd_users", "domain", 255),
    ("eximauthd_grants", "user_address", 320),
    ("eximauthd_grants", "sender", 320),
    ("eximauthd_known_clients", "address", 320),
    ("eximauthd_rate_counters", "address", 320),
    ("eximauthd_user_limits", "address", 320),
]
_LOWERED = [("eximauthd_users", ("address", "domain")),
            ("eximauthd_grants", ("user_address", "sender"))]


def _lower_ascii_rows(table_name: str, columns: tuple[str, ...]) -> None:
    table = sa.table(table_name, *(sa.column(c, sa.String) for c in columns))
    for name in columns:
        column = table.c[name]
        # ASCII only (as many bytes as characters): LOWER() of other text may not be
        # collation-equal to it, and such rows never name an account anyway.
        op.execute(sa.update(table)
                   .where(sa.func.char_length(column) == sa.func.length(column),
                          sa.cast(column, sa.LargeBinary)
                          != sa.cast(sa.func.lower(column), sa.LargeBinary))
                   .values({name: sa.func.lower(column)}))


def upgrade() -> None:
    if op.get_bind().dialect.name not in _MYSQL:
        return
    for table_name, columns in _LOWERED:
        _lower_ascii_rows(table_name, columns)
    for table_name, column, length in _COLUMNS:
        op.alter_column(table_name, column, existing_nullable=False,
                        type_=mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"))


def downgrade() -> None:
    if op.get_bind().dialect.name not in _MYSQL:
        return
    for table_name, column, length in _COLUMNS:
        op.alter_column(table_name, column, existing_nullable=False, type_=sa.String(length))
