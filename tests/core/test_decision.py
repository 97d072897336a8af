"""Decisions are typed: code branches on reasons, logs and Exim see their words."""

from __future__ import annotations

import pytest

from eximauthd.core.decision import THROTTLED, Decision, Reason, Result
from eximauthd.core.protocol import format_reply, is_valid_reply


def test_a_reason_with_a_detail_reads_as_one_word() -> None:
    """A rate limit says which limit: ``rate-limit-recipients-1h``; others are their word."""
    over = Decision.defer(Reason.RATE_LIMIT, "recipients-1h")
    assert over.text == "rate-limit-recipients-1h"
    assert format_reply(over) == b"defer rate-limit-recipients-1h\n"
    assert Decision.no(Reason.BAD_PASSWORD).text == "bad-password"
    assert Decision.yes().text == "ok"


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_reaches_exim_unchanged_as_a_defer(reason: Reason) -> None:
    """Each word is already what the wire allows (no rewriting, under 64 characters)."""
    reply = format_reply(Decision.defer(reason))
    assert reply == b"defer " + reason.value.encode() + b"\n"
    assert is_valid_reply(reply)


def test_reasons_are_distinct_words() -> None:
    """No two members share a word: a log line or a metric names exactly one reason."""
    assert len({r.value for r in Reason}) == len(Reason)


def test_only_the_throttle_refusals_count_as_throttled() -> None:
    """The failure floor learns from every checked answer but these two (see defenses)."""
    assert {r for r in Reason if r.value.startswith("throttled-")} == THROTTLED


def test_only_yes_is_allowed() -> None:
    """no and defer both refuse."""
    assert [d.allowed for d in (Decision.yes(), Decision.no(Reason.DISABLED),
                                Decision.defer(Reason.TIMEOUT))] == [True, False, False]
    assert Decision.yes().result is Result.YES
