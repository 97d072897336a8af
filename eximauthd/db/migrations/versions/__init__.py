"""Alembic revisions of eximauthd's own schema."""
