"""Decisions are values: a result and a typed, log-safe reason."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["THROTTLED", "Decision", "Reason", "Result"]


class Result(enum.Enum):
    """The three answers Exim understands (docs/service.md, "Socket protocol")."""

    YES = "yes"
    NO = "no"
    DEFER = "defer"


class Reason(enum.StrEnum):
    """Why a decision is what it is.  The values are the words logs, metrics and the HTTP API
    show (and, for ``defer``, Exim); code branches on the members, never on the words."""

    # yes
    OK = "ok"
    OK_CACHED = "ok-cached"
    OK_REHASHED = "ok-rehashed"
    SAME_ADDRESS = "same-address"
    SAME_DOMAIN = "same-domain"
    GRANT_ADDRESS = "grant-address"
    GRANT_DOMAIN = "grant-domain"
    READY = "ready"
    FORGOTTEN = "forgotten"
    # no: credentials refused before any lookup
    EMPTY_USERNAME = "empty-username"
    EMPTY_PASSWORD = "empty-password"
    PASSWORD_TOO_LONG = "password-too-long"
    MALFORMED_USERNAME = "malformed-username"
    MALFORMED_PASSWORD = "malformed-password"
    # no: the account and its stored password
    UNKNOWN_USER = "unknown-user"
    AMBIGUOUS_USER = "ambiguous-user"
    BAD_PASSWORD = "bad-password"
    DISABLED = "disabled"
    NO_PASSWORD_SET = "no-password-set"
    UNKNOWN_SCHEME = "unknown-scheme"
    MALFORMED_HASH = "malformed-hash"
    COST_OVER_CEILING = "cost-over-ceiling"
    UNUSABLE_PASSWORD = "unusable-password"
    PLAINTEXT_DISABLED = "plaintext-disabled"
    # no: the throttle refused the check
    THROTTLED_IP = "throttled-ip"
    THROTTLED_USER = "throttled-user"
    # no: relaying
    EMPTY_ID = "empty-id"
    MALFORMED_ID = "malformed-id"
    NULL_SENDER = "null-sender"
    MALFORMED_SENDER = "malformed-sender"
    MALFORMED_RECIPIENT = "malformed-recipient"
    SENDER_MISMATCH = "sender-mismatch"
    # defer
    DATABASE_UNAVAILABLE = "database-unavailable"
    RATE_LIMIT = "rate-limit"  # with a detail: "recipients-1h"
    RATELIMIT_UNAVAILABLE = "ratelimit-unavailable"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal-error"
    # defer: a request that could not be read (:class:`~eximauthd.errors.ProtocolError`)
    EMPTY = "empty"
    TOO_LONG = "too-long"
    MISSING_NEWLINE = "missing-newline"
    SEVERAL_LINES = "several-lines"
    NOT_ASCII = "not-ascii"
    UNKNOWN_VERB = "unknown-verb"
    WRONG_FIELD_COUNT = "wrong-field-count"
    BAD_BASE64 = "bad-base64"
    UNSUPPORTED_MECHANISM = "unsupported-mechanism"
    BAD_CLIENT_IP = "bad-client-ip"
    BAD_TRANSACTION = "bad-transaction"
    READ_TIMEOUT = "read-timeout"


# The refusals that checked no password: they say nothing about how long a check takes.
THROTTLED = frozenset({Reason.THROTTLED_IP, Reason.THROTTLED_USER})


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a credential or relay check.

    ``reason`` is typed; ``detail`` qualifies the reasons that carry one (a rate limit's kind
    and window).  :attr:`text` is what logs and Exim see: short, machine-friendly
    (``unknown-user``, ``rate-limit-recipients-1h``) and never a password or a hash.
    """

    result: Result
    reason: Reason
    detail: str = ""

    @property
    def allowed(self) -> bool:
        """True only for an explicit yes; no and defer both refuse."""
        return self.result is Result.YES

    @property
    def text(self) -> str:
        """The reason as logged and sent: ``reason`` or ``reason-detail``."""
        return f"{self.reason}-{self.detail}" if self.detail else str(self.reason)

    @classmethod
    def yes(cls, reason: Reason = Reason.OK) -> Decision:
        return cls(Result.YES, reason)

    @classmethod
    def no(cls, reason: Reason) -> Decision:
        return cls(Result.NO, reason)

    @classmethod
    def defer(cls, reason: Reason, detail: str = "") -> Decision:
        return cls(Result.DEFER, reason, detail)
