"""Initial schema: users, send-as grants, auth failure counters.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_HASH = sa.String(255).with_variant(
    mysql.VARCHAR(255, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)


def upgrade() -> None:
    op.create_table(
        "eximauthd_users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(320), nullable=False, unique=True),
        sa.Column("domain", sa.String(255), nullable=False, index=True),
        sa.Column("password_hash", _HASH, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "eximauthd_grants",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_address", sa.String(320), nullable=False, index=True),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("user_address", "sender", name="uq_eximauthd_grants_user_sender"),
    )
    op.create_table(
        "eximauthd_auth_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("subject", sa.String(320), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("window_start", sa.DateTime, nullable=False),
        sa.Column("last_failure_at", sa.DateTime, nullable=False),
        sa.Column("last_password_tag", sa.String(64), nullable=True),
        sa.UniqueConstraint("scope", "subject", name="uq_eximauthd_auth_failures_scope_subject"),
    )


def downgrade() -> None:
    op.drop_table("eximauthd_auth_failures")
    op.drop_table("eximauthd_grants")
    op.drop_table("eximauthd_users")
