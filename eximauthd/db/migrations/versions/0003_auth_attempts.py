"""Throttling reserves before the password check: auth attempts replace failure counters.

The old counters were read, then a password was checked, then a failure was added: guesses
already in flight all passed a limit each of them read as not reached.  Each check now reserves
a row first (one per distinct user-and-password digest, so every distinct wrong password counts
once per window) and counts the rows after its own is committed.  The old counters are dropped:
they hold at most one window (15 minutes by default) of state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _ascii(length: int) -> sa.String:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="ascii", collation="ascii_bin"), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "eximauthd_auth_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("scope", _ascii(8), nullable=False),
        sa.Column("subject", _ascii(320), nullable=False),
        sa.Column("tag", _ascii(32), nullable=False),
        sa.Column("nonce", _ascii(32), nullable=False),
        sa.Column("attempted_at", sa.DateTime, nullable=False, index=True),
        sa.UniqueConstraint("scope", "subject", "tag", name="uq_eximauthd_auth_attempts_key"),
    )
    op.drop_table("eximauthd_auth_failures")


def downgrade() -> None:
    op.create_table(
        "eximauthd_auth_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("subject", sa.String(320), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("window_start", sa.DateTime, nullable=False, index=True),
        sa.Column("last_failure_at", sa.DateTime, nullable=False),
        sa.Column("last_password_tag", sa.String(64), nullable=True),
        sa.UniqueConstraint("scope", "subject", name="uq_eximauthd_auth_failures_scope_subject"),
    )
    op.drop_table("eximauthd_auth_attempts")
