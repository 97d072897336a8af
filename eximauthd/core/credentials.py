"""AUTH credentials, read once at the edge: refused there, or typed for every layer after it.

Order matters and is the point of the module:

1. An empty username or password is ``no`` before anything else: the open relay this project
   closes was an empty password "matching" the empty result of a lookup for an unknown user.
2. A password longer than :data:`MAX_PASSWORD_BYTES` is ``no``: it bounds the work of a request.
3. A username that is not an address cannot name an account: ``no`` without database work.
4. A password with undecodable bytes (smuggled in as surrogates) cannot be a stored one: ``no``.

What passes is a :class:`Credentials`: the parsed address, the password and the client.  The
throttle, the cache and the credential check take it and never parse the strings again.  Pure:
an empty password is refused even when the database is down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import AddressError
from .addresses import Address, parse_address
from .clients import Client
from .decision import Decision, Reason

__all__ = ["MAX_PASSWORD_BYTES", "Credentials", "read_credentials"]

# Far above any real password; bounds the work one request can cause.
MAX_PASSWORD_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Credentials:
    """Credentials that passed every check that needs no lookup.  ``repr`` never shows the
    password."""

    address: Address
    password: str = field(repr=False)
    client: Client

    @property
    def user(self) -> str:
        """The account's canonical ``local@domain``."""
        return str(self.address)


def read_credentials(username: str, password: str, client: Client) -> Credentials | Decision:
    """The credentials of an AUTH request, or the ``no`` that refuses them without a lookup."""
    if not username:
        return Decision.no(Reason.EMPTY_USERNAME)
    if not password:
        return Decision.no(Reason.EMPTY_PASSWORD)
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        return Decision.no(Reason.PASSWORD_TOO_LONG)
    try:
        address = parse_address(username)
    except AddressError:
        return Decision.no(Reason.MALFORMED_USERNAME)
    if _has_surrogates(password):
        return Decision.no(Reason.MALFORMED_PASSWORD)
    return Credentials(address, password, client)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
