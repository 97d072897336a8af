"""The exception hierarchy.

Every exception eximauthd raises on purpose derives from :class:`EximauthdError`, so a caller can
catch the root for "something broke" and a narrow class for an expected condition.  A *decision*
(yes/no) is never an exception: see :class:`eximauthd.core.decision.Decision`.

No message built here ever contains a password, a hash or a database URL with its password.
"""

from __future__ import annotations

__all__ = [
    "AddressError",
    "ColumnTooNarrowError",
    "ConfigError",
    "EximauthdError",
    "HashingError",
    "ProtocolError",
    "SchemaMissingError",
    "SchemaRevisionError",
    "StorageError",
    "UserExistsError",
    "UserNotFoundError",
    "ValueTooLongError",
]


class EximauthdError(Exception):
    """Root of every error eximauthd raises on purpose."""


class ConfigError(EximauthdError, ValueError):
    """The configuration file or an ``EXIMAUTHD_*`` variable is invalid.

    The message names the offending key, e.g. ``database.url: not a valid SQLAlchemy URL``.
    """


class AddressError(EximauthdError, ValueError):
    """A string is not a mail address eximauthd accepts (``local@domain``)."""


class HashingError(EximauthdError):
    """Producing a new hash failed (not raised for a mismatch or a malformed stored hash)."""


class StorageError(EximauthdError):
    """The database could not answer.

    Raised instead of SQLAlchemy's exceptions, whose text may carry bound parameters (hashes)
    and whose URL may carry a password.
    """


class ValueTooLongError(StorageError):
    """A write refused because a column is narrower than the value (MySQL error 1406)."""


class SchemaMissingError(StorageError):
    """eximauthd's tables (or the configured legacy table) do not exist."""


class SchemaRevisionError(StorageError):
    """The database answers, but the schema revision it records cannot be used (several
    rows in the version table: hand-edited, or not eximauthd's)."""


class ColumnTooNarrowError(EximauthdError):
    """``migrate-passwords``: the password column cannot hold an argon2id hash; nothing written."""


class UserExistsError(EximauthdError, ValueError):
    """``user add`` for an address that already has an account."""


class UserNotFoundError(EximauthdError, LookupError):
    """An account operation named an address that has no account."""


class ProtocolError(EximauthdError, ValueError):
    """A socket request that is not one of the documented lines.

    ``reason`` is a short token (``bad-base64``, ``unknown-verb``...) that is safe to log and to
    send back in ``defer <reason>``; the message never quotes the request.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
