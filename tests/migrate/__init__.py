"""Tests of eximauthd.migrate: ``migrate-passwords``."""
