"""eximauthd: SMTP AUTH and relay decisions for Exim, with argon2id credentials, fail-closed.

The public surface is small and re-exported here (docs/library.md); everything else is an
implementation detail.

- verify a credential: :class:`Authenticator` (``verify() -> Decision``);
- decide a relay: :func:`may_relay` with a :class:`RelayPolicy` (pure);
- hash and verify passwords: :class:`Hasher` (``hash()``, ``verify() -> VerifyResult``),
  :class:`Scheme`, with the argon2id parameters of a :class:`HashingConfig`;
- configuration: :func:`load_config` returns a frozen :class:`Config`;
- values: :class:`Decision` with its :class:`Result` and :class:`Reason`, :class:`Address`
  from :func:`parse_address`;
- errors: :class:`EximauthdError` and its subclasses.  A decision is never an exception.
"""

from __future__ import annotations

from .auth.authn import Authenticator
from .config import load_config
from .core.addresses import Address, parse_address
from .core.decision import Decision, Reason, Result
from .core.hashing import Hasher, Scheme, VerifyResult
from .core.policy import RelayPolicy, may_relay
from .errors import (
    AddressError,
    ColumnTooNarrowError,
    ConfigError,
    EximauthdError,
    HashingError,
    ProtocolError,
    SchemaMissingError,
    SchemaRevisionError,
    StorageError,
    UserExistsError,
    UserNotFoundError,
    ValueTooLongError,
)
from .settings import Config, HashingConfig

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
    "HashingConfig",
    "HashingError",
    "ProtocolError",
    "Reason",
    "RelayPolicy",
    "Result",
    "SchemaMissingError",
    "SchemaRevisionError",
    "Scheme",
    "StorageError",
    "UserExistsError",
    "UserNotFoundError",
    "ValueTooLongError",
    "VerifyResult",
    "load_config",
    "may_relay",
    "parse_address",
]
