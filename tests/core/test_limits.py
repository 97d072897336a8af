"""Outbound limits ``COUNT/WINDOW`` (eximauthd.core.limits): parsing and formatting at every
edge."""

from __future__ import annotations

import pytest

from eximauthd.core.limits import KINDS, Limit, format_window, parse_limit, parse_limits
from eximauthd.errors import ConfigError


def test_the_kinds_are_recipients_and_messages() -> None:
    """Exactly two kinds are limited: recipients and messages."""
    assert KINDS == ("recipients", "messages")


@pytest.mark.parametrize(("spec", "limit"), [
    ("1/1s", Limit(1, 1)),                       # the smallest window
    ("1/s", Limit(1, 1)),                        # "/s" means one second
    ("1/7d", Limit(7 * 86400, 1)),               # the largest window
    ("1/604800s", Limit(604800, 1)),             # the same, in seconds (six digits)
    ("1/10080m", Limit(604800, 1)),              # and in minutes
    ("1/168h", Limit(604800, 1)),                # and in hours
    ("999999999/1h", Limit(3600, 999999999)),    # the largest count (nine digits)
    ("5/90M", Limit(5400, 5)),                   # units are caseless
    ("5/90m", Limit(5400, 5)),
])
def test_limits_at_the_edges_parse(spec: str, limit: Limit) -> None:
    """The smallest and largest legal windows and counts are accepted as written."""
    assert parse_limit(spec) == limit


@pytest.mark.parametrize(("spec", "message"), [
    ("1/604801s", "between 1s and 7d"),          # one second over the longest window
    ("1/10081m", "between 1s and 7d"),
    ("1/169h", "between 1s and 7d"),
    ("1/8d", "between 1s and 7d"),
    ("1/0s", "between 1s and 7d"),               # one second under the shortest
    ("1/0d", "between 1s and 7d"),
    ("0/1h", "at least 1"),
    ("000/1h", "at least 1"),
    ("1000000000/1h", "expected COUNT/WINDOW"),  # ten digits
    ("1/1000000s", "expected COUNT/WINDOW"),     # seven digits
    ("1/1w", "expected COUNT/WINDOW"),
    ("x1/1h", "expected COUNT/WINDOW"),
    ("1/1hx", "expected COUNT/WINDOW"),
    ("/1h", "expected COUNT/WINDOW"),
])
def test_limits_one_past_an_edge_are_refused_saying_why(spec: str, message: str) -> None:
    """A window or count one step outside the legal range is a ConfigError naming the rule."""
    with pytest.raises(ConfigError) as refused:
        parse_limit(spec)
    assert message in str(refused.value)
    assert repr(spec) in str(refused.value)


@pytest.mark.parametrize(("spec", "message"), [
    ("9" * 40 + "/1h", "expected COUNT/WINDOW"),
    (" " * 40 + "1/8d", "between 1s and 7d"),   # surrounding blanks are legal, and quoted
    (" " * 40 + "0/1h", "at least 1"),
])
def test_an_error_quotes_at_most_32_characters_of_the_spec(spec: str, message: str) -> None:
    """A long bad spec is cut in the message (it is configuration, but may be pasted junk)."""
    with pytest.raises(ConfigError) as refused:
        parse_limit(spec)
    assert message in str(refused.value)
    assert repr(spec[:32]) in str(refused.value)
    assert repr(spec[:33]) not in str(refused.value)


@pytest.mark.parametrize(("seconds", "text"), [
    (1, "1s"), (59, "59s"), (60, "1m"), (90, "90s"), (120, "2m"), (5400, "90m"),
    (3600, "1h"), (7200, "2h"), (86400, "1d"), (90000, "25h"), (604800, "7d"),
])
def test_a_window_is_written_in_the_largest_unit_that_divides_it(seconds: int, text: str) -> None:
    """Seconds, minutes, hours and days each appear when they are the largest exact unit."""
    assert format_window(seconds) == text
    assert parse_limit(f"1/{text}").window_seconds == seconds


@pytest.mark.parametrize(("limit", "text"), [
    (Limit(3600, 100), "100/1h"), (Limit(60, 5), "5/1m"), (Limit(30, 7), "7/30s"),
    (Limit(604800, 1), "1/7d"),
])
def test_a_limit_reads_back_as_count_slash_window(limit: Limit, text: str) -> None:
    """``str(Limit)`` is the spec an admin writes, and parses back to the same limit."""
    assert str(limit) == text
    assert parse_limit(text) == limit


def test_several_limits_come_back_sorted_by_window() -> None:
    """Limits are kept shortest window first, whatever order they were written in."""
    assert parse_limits(["1000/1d", "10/1m", "100/1h"]) == (
        Limit(60, 10), Limit(3600, 100), Limit(86400, 1000))
    assert parse_limits([]) == ()


def test_two_limits_for_one_window_are_refused_saying_so() -> None:
    """``10/1h`` and ``20/60m`` are one window twice: a ConfigError says exactly that."""
    with pytest.raises(ConfigError) as refused:
        parse_limits(["10/1h", "20/60m"])
    assert str(refused.value) == "two limits for the same window"


def test_limits_for_distinct_windows_with_one_count_are_kept() -> None:
    """Only a repeated window is refused, not a repeated count."""
    assert parse_limits(("10/1h", "10/1d")) == (Limit(3600, 10), Limit(86400, 10))
