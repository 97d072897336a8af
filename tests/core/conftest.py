"""Every test of the pure core starts with the parsers' memos empty."""

from __future__ import annotations

import pytest

from eximauthd.core import addresses, protocol


@pytest.fixture(autouse=True)
def _no_remembered_answers() -> None:
    """parse_address and parse_client_ip remember recent answers: a test that found its
    input remembered would not exercise the parsing at all (nor would a mutation run)."""
    addresses._known.cache_clear()
    protocol._known_ip.cache_clear()
