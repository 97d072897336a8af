"""The ``eximauthd`` command."""
