"""eximauthd: SMTP AUTH and relay decisions for Exim, with argon2id credentials, fail-closed.

The public surface is small and re-exported here; everything else is an implementation detail.
"""

from __future__ import annotations

from .auth.authn import Authenticator
from .config import Config, load_config
from .core.addresses import Address, parse_address
from .core.decision import Decision, Result
from .core.hashing import Hasher, Scheme, VerifyResult
from .errors import (
    AddressError,
    ColumnTooNarrowError,
    ConfigError,
    EximauthdError,
    HashingError,
    SchemaMissingError,
    StorageError,
    UserExistsError,
    UserNotFoundError,
)

__all__ = [
    "Address",
    "AddressError",
    "Authenticator",
    "ColumnTooNarrowError",
    "Config",
    "ConfigError",
    "Decision",
    "EximauthdError",
    "Hasher",
    "HashingError",
    "Result",
    "SchemaMissingError",
    "Scheme",
    "StorageError",
    "UserExistsError",
    "UserNotFoundError",
    "VerifyResult",
    "load_config",
    "parse_address",
]
