"""Tests of eximauthd.auth: the credential check, the AUTH cache, throttling and padding."""
