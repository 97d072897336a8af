"""Decisions are values: a result and a short, log-safe reason."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Decision", "Result"]


class Result(enum.Enum):
    """The three answers Exim understands (docs/service.md, "Socket protocol")."""

    YES = "yes"
    NO = "no"
    DEFER = "defer"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a credential or relay check.

    ``reason`` is short, machine-friendly (``unknown-user``, ``bad-password``) and never contains
    a password or a hash: it goes to logs and, for ``defer``, to Exim.
    """

    result: Result
    reason: str

    @property
    def allowed(self) -> bool:
        """True only for an explicit yes; no and defer both refuse."""
        return self.result is Result.YES

    @classmethod
    def yes(cls, reason: str = "ok") -> Decision:
        return cls(Result.YES, reason)

    @classmethod
    def no(cls, reason: str) -> Decision:
        return cls(Result.NO, reason)

    @classmethod
    def defer(cls, reason: str) -> Decision:
        return cls(Result.DEFER, reason)
