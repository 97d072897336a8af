"""Tests of eximauthd.db: what the stores read and write."""
