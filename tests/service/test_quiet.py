"""RepeatFilter: a warning repeated every second is one line, then one count a minute."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from eximauthd.service.logs import decision_fields
from eximauthd.service.quiet import RepeatFilter

from ..support import Clock


class Lines(logging.Handler):
    """The messages that got through, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lines(clock: Clock) -> Iterator[Lines]:
    """A handler with the filter on it, behind the logger ``test.quiet``."""
    handler = Lines()
    handler.addFilter(RepeatFilter(60.0, clock=clock))
    logger = logging.getLogger("test.quiet")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)


log = logging.getLogger("test.quiet")


def _every_second(clock: Clock, seconds: int, message: str = "rate counters not synchronised "
                  "(%s): update rate counters: cannot connect (OperationalError 2003)") -> None:
    for _ in range(seconds):
        log.warning(message, f"{int(clock.now) - 1000}s old")
        clock.now += 1


def test_a_warning_every_second_is_one_line_a_minute_with_its_count(clock: Clock,
                                                                     lines: Lines) -> None:
    """Ten minutes of a per-second warning: the first line, then one a minute with a count."""
    _every_second(clock, 600)
    assert len(lines.lines) == 10
    assert lines.lines[0] == ("rate counters not synchronised (0s old): update rate counters: "
                              "cannot connect (OperationalError 2003)")
    assert all(line.endswith(" (repeated 59 times in the last minute)")
               for line in lines.lines[1:])
    assert lines.lines[1].startswith("rate counters not synchronised (60s old): ")


def test_a_repeat_after_a_quiet_spell_says_how_long_it_counted(clock: Clock,
                                                               lines: Lines) -> None:
    """Repeats dropped, then silence: the next line tells them, over the time since."""
    _every_second(clock, 3)
    clock.now += 600
    log.warning("AUTH cache not revalidated: %s", "read accounts: cannot connect")
    log.warning("AUTH cache not revalidated: %s", "read accounts: cannot connect")
    clock.now += 0.5
    _every_second(clock, 1)
    assert lines.lines[1:] == [
        "AUTH cache not revalidated: read accounts: cannot connect",
        "rate counters not synchronised (603s old): update rate counters: cannot connect "
        "(OperationalError 2003) (repeated 2 times in the last 10 minutes)",
    ]


def test_one_repeat_is_counted_once(clock: Clock, lines: Lines) -> None:
    """The count reads as English: once."""
    log.warning("not ready: %s", "down")
    log.warning("not ready: %s", "down")
    clock.now += 60
    log.warning("not ready: %s", "down")
    assert lines.lines == ["not ready: down", "not ready: down (repeated once in the last minute)"]


def test_different_warnings_are_counted_apart(clock: Clock, lines: Lines) -> None:
    """Another text, logger or level is another line; only numbers are read as equal."""
    log.warning("not ready: %s", "cannot connect")
    log.warning("not ready: %s", "table missing")
    log.error("not ready: %s", "cannot connect")
    logging.getLogger("test.quiet.other").warning("not ready: %s", "cannot connect")
    log.warning("not ready: %s", "cannot connect (2013)")
    log.warning("not ready: %s", "cannot connect (2003)")
    assert lines.lines == ["not ready: cannot connect", "not ready: table missing",
                           "not ready: cannot connect", "not ready: cannot connect",
                           "not ready: cannot connect (2013)"]


def test_info_and_decision_lines_are_never_dropped(clock: Clock, lines: Lines) -> None:
    """Only warnings are counted: every decision line and every info line is logged."""
    for _ in range(3):
        log.info("AUTH cache: dropped 1 entry of changed accounts")
        log.warning("bad request", extra=decision_fields(verb="BAD", result="defer"))
    assert lines.lines == ["AUTH cache: dropped 1 entry of changed accounts", "bad request"] * 3


def test_arguments_are_rendered_once_into_the_summary(clock: Clock, lines: Lines) -> None:
    """A summary line is the message with its arguments, then the count (no %-formatting
    left to go wrong)."""
    log.warning("load %d%%: %s", 100, "x")
    log.warning("load %d%%: %s", 100, "x")
    clock.now += 61
    log.warning("load %d%%: %s", 99, "x")
    assert lines.lines == ["load 100%: x", "load 99%: x (repeated once in the last minute)"]


def test_beyond_its_limit_of_kinds_new_warnings_pass_unfiltered(clock: Clock) -> None:
    """Memory is bounded; what is not followed is logged rather than lost."""
    handler = Lines()
    handler.addFilter(RepeatFilter(60.0, clock=clock, max_kinds=2))
    logger = logging.getLogger("test.quiet.bounded")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for word in ("a", "b", "c", "c", "a", "a"):
            logger.warning("failed: %s", word)
        clock.now += 61
        logger.warning("failed: %s", "d")
        logger.warning("failed: %s", "d")
    finally:
        logger.removeHandler(handler)
    assert handler.lines == ["failed: a", "failed: b", "failed: c", "failed: c", "failed: d"]
