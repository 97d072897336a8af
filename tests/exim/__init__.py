"""Tests of eximauthd.exim and the shipped Exim snippets, up to a real Exim."""
