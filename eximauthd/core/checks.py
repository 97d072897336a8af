"""The result of one diagnostic check (``eximauthd doctor``), and how it is printed.  Pure.

Every layer that contributes checks (the SMTP self-test in :mod:`eximauthd.exim.selftest`, the
command in :mod:`eximauthd.cli.doctor`) returns these, so the command prints them all alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

__all__ = ["CheckResult", "Status"]


class Status(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What was checked and how it went; a FAIL or warn says why and what to do."""

    status: Status
    what: str
    why: str = ""
    fix: str = ""

    @classmethod
    def ok(cls, what: str) -> CheckResult:
        return cls(Status.OK, what)

    @classmethod
    def warn(cls, what: str, why: str, fix: str = "") -> CheckResult:
        return cls(Status.WARN, what, why, fix)

    @classmethod
    def fail(cls, what: str, why: str, fix: str) -> CheckResult:
        return cls(Status.FAIL, what, why, fix)

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL

    def line(self) -> str:
        """``ok   <what>``, ``warn <what>: <why> (fix: <fix>)``, ``FAIL <what>: <why> (fix: ...)``.

        One line whatever the texts hold: a reply from a server may carry a newline, or an
        escape sequence meant for the admin's terminal (shown as ``?``).
        """
        text = self.what
        if self.status is not Status.OK:
            text += f": {self.why}" if self.why else ""
            text += f" (fix: {self.fix})" if self.fix else ""
        text = _CONTROL_RE.sub("?", " ".join(text.split()))
        return f"{self.status.value:<4} {text}"


# C0 (after whitespace is folded), DEL and C1: what a terminal may act on.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
