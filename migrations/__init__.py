"""Alembic environment for eximauthd's own tables (shipped as ``eximauthd.migrations``)."""
