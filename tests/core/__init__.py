"""Tests of eximauthd.core: the pure decisions and parsers."""
