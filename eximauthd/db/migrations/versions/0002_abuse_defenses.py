"""Abuse defenses: known client networks, outbound rate counters, per-user limits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Pruning deletes old failure windows by window_start: an index keeps it from scanning
    # (and, on InnoDB, locking) the whole table.
    op.create_index("ix_eximauthd_auth_failures_window_start", "eximauthd_auth_failures",
                    ["window_start"])
    op.create_table(
        "eximauthd_known_clients",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("last_success_at", sa.DateTime, nullable=False, index=True),
        sa.UniqueConstraint("address", "network",
                            name="uq_eximauthd_known_clients_address_network"),
    )
    op.create_table(
        "eximauthd_rate_counters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("window_seconds", sa.Integer, nullable=False),
        sa.Column("bucket", sa.BigInteger, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
        sa.UniqueConstraint("address", "kind", "window_seconds", "bucket",
                            name="uq_eximauthd_rate_counters_key"),
    )
    op.create_table(
        "eximauthd_user_limits",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(320), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("window_seconds", sa.Integer, nullable=False),
        sa.Column("maximum", sa.Integer, nullable=False),
        sa.UniqueConstraint("address", "kind", "window_seconds",
                            name="uq_eximauthd_user_limits_key"),
    )


def downgrade() -> None:
    op.drop_table("eximauthd_user_limits")
    op.drop_table("eximauthd_rate_counters")
    op.drop_table("eximauthd_known_clients")
    op.drop_index("ix_eximauthd_auth_failures_window_start",
                  table_name="eximauthd_auth_failures")
