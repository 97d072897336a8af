"""The relay decision: may authenticated id X use envelope sender S?  Pure: values in, value out.

The product's promise, in order:

1. An empty authenticated id is ``no``.  Exim's ``authenticated = *`` matches a session whose id
   is empty; such a session is exactly the seed's spammer.
2. The null sender (bounces) is ``no``: an authenticated client has no business sending them.
3. Ids, senders and recipients that are not plain ``dot-atom@domain`` are ``no``: quoted local
   parts, source routes (``@a:b@c``) and address literals never match anything by accident.
4. ``S == X`` (case-insensitive, as Exim compares) is ``yes``; so is a send-as grant for ``S``
   or for ``@S.domain``.
5. In a strict domain nothing else is allowed (Postfix's
   ``reject_authenticated_sender_login_mismatch``); elsewhere ``S.domain == X.domain`` is
   ``yes``.  Domains are compared whole: ``example.test.evil`` or ``sub.example.test`` are
   other domains.

Rules 1 to 3 read the request (:func:`read_relay`), once, at the edge; rules 4 and 5 decide on
what was read (:func:`decide_relay`), with the grants when needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import AddressError
from .addresses import Address, parse_address
from .decision import Decision, Reason

__all__ = ["Relay", "RelayPolicy", "decide_relay", "may_relay", "read_relay"]


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    """Settings of the relay decision (``[policy]``).

    ``strict_domains`` are lower-case domains whose logins may send only as their own address
    (or as a send-as grant), never as another address of the same domain.
    """

    strict_domains: frozenset[str] = frozenset()


def _parse(text: str) -> Address | None:
    """The canonical address of *text*, or None when it is not a plain address."""
    try:
        return parse_address(text)
    except AddressError:
        return None


# Decisions are immutable values: the ones every RELAY may return are made once.
_YES_SAME_ADDRESS = Decision.yes(Reason.SAME_ADDRESS)
_YES_SAME_DOMAIN = Decision.yes(Reason.SAME_DOMAIN)
_NO_SENDER_MISMATCH = Decision.no(Reason.SENDER_MISMATCH)


@dataclass(frozen=True, slots=True)
class Relay:
    """A RELAY request that passed rules 1 to 3: the login's and the sender's addresses."""

    login: Address
    sender: Address
    recipient: str
    transaction: str = ""


def _grant_matches(grant: str, sender: Address) -> Reason | None:
    """The yes-reason if *grant* (``user@domain`` or ``@domain``) covers *sender*, else None."""
    if grant.startswith("@"):
        # Parsed like an address, not lower-cased: str.lower() folds look-alikes such as the
        # Kelvin sign into ASCII ("@\u212aiel.test" would cover kiel.test).
        domain = _parse("postmaster" + grant)
        if domain is not None and domain.domain == sender.domain:
            return Reason.GRANT_DOMAIN
        return None
    return Reason.GRANT_ADDRESS if _parse(grant) == sender else None


def read_relay(authenticated_id: str, sender: str, recipient: str,
               transaction: str = "") -> Relay | Decision:
    """The typed RELAY request, or the ``no`` of rules 1 to 3 (``empty-id``, ``malformed-id``,
    ``null-sender``, ``malformed-sender``, ``malformed-recipient``)."""
    if not authenticated_id:
        return Decision.no(Reason.EMPTY_ID)
    login = _parse(authenticated_id)
    if login is None:
        return Decision.no(Reason.MALFORMED_ID)
    if not sender:
        return Decision.no(Reason.NULL_SENDER)
    envelope = _parse(sender)
    if envelope is None:
        return Decision.no(Reason.MALFORMED_SENDER)
    # Of the characters isprintable() lets through, only the ASCII space is whitespace
    # (str.isspace), so this refuses what any(c.isspace() for c in recipient) would.
    if not recipient or " " in recipient or not recipient.isprintable():
        return Decision.no(Reason.MALFORMED_RECIPIENT)
    return Relay(login, envelope, recipient, transaction)


def decide_relay(relay: Relay, grants: Iterable[str], policy: RelayPolicy) -> Decision:
    """Rules 4 and 5: may *relay*'s login send as its sender?

    *grants* are the login's send-as grants as stored: addresses or ``@domain``.  Malformed
    grants never match.  Reasons: ``same-address``, ``grant-address``, ``grant-domain``,
    ``same-domain`` (yes); ``sender-mismatch`` (no).
    """
    login, envelope = relay.login, relay.sender
    if envelope == login:
        return _YES_SAME_ADDRESS
    for grant in grants:
        reason = _grant_matches(grant, envelope)
        if reason is not None:
            return Decision.yes(reason)
    if login.domain in policy.strict_domains:
        return _NO_SENDER_MISMATCH
    if envelope.domain == login.domain:
        return _YES_SAME_DOMAIN
    return _NO_SENDER_MISMATCH


def may_relay(authenticated_id: str, sender: str, recipient: str, grants: Iterable[str],
              policy: RelayPolicy) -> Decision:
    """Decide whether *authenticated_id* may relay with envelope *sender* to *recipient*:
    :func:`read_relay`, then :func:`decide_relay`.  For callers that hold strings."""
    relay = read_relay(authenticated_id, sender, recipient)
    if isinstance(relay, Decision):
        return relay
    return decide_relay(relay, grants, policy)
