"""Tests of eximauthd.service: ``eximauthd serve`` over the socket and HTTP."""
