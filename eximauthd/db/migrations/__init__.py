"""Alembic environment for eximauthd's own tables (eximauthd.db.migrations)."""
