"""Checking a credential and the defenses around it: verification, the positive cache,
brute-force throttling, failure padding."""
