"""Tests of eximauthd.cli: the ``eximauthd`` command."""
