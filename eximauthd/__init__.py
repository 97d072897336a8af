"""eximauthd: SMTP AUTH and relay decisions for Exim, with argon2id credentials, fail-closed.

The public surface is small and re-exported here; everything else is an implementation detail.
"""

from __future__ import annotations

from .addresses import Address, parse_address
from .authn import Authenticator
from .config import Config, load_config
from .decision import Decision, Result
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
from .hashing import Hasher, Scheme, VerifyResult

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
