"""The relay decision: the envelope sender must belong to the login."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximauthd.core.addresses import parse_address
from eximauthd.core.decision import Reason, Result
from eximauthd.core.policy import Relay, RelayPolicy, decide_relay, may_relay, read_relay
from eximauthd.errors import AddressError

ALICE = "alice@example.test"

DEFAULT = RelayPolicy()
STRICT = RelayPolicy(frozenset({"example.test"}))
RCPT = "someone@remote.test"

YES_REASONS = frozenset({"same-address", "grant-address", "grant-domain", "same-domain"})
NO_REASONS = frozenset({"empty-id", "malformed-id", "null-sender", "malformed-sender",
                        "malformed-recipient", "sender-mismatch"})


def case(login: str, sender: str, grants: list[str], policy: RelayPolicy, result: Result,
         reason: str, id: str) -> object:
    return pytest.param(login, sender, grants, policy, result, reason, id=id)


@pytest.mark.parametrize(("login", "sender", "grants", "policy", "result", "reason"), [
    case("alice@example.test", "alice@example.test", [], DEFAULT, Result.YES, "same-address",
         id="own-address"),
    case("alice@example.test", "ALICE@Example.TEST", [], STRICT, Result.YES, "same-address",
         id="own-address-other-case-strict"),
    case("Alice@EXAMPLE.test", "bob@example.test", [], DEFAULT, Result.YES, "same-domain",
         id="same-domain"),
    case("alice@example.test", "bob@example.test", [], STRICT, Result.NO, "sender-mismatch",
         id="same-domain-strict"),
    case("alice@other.test", "bob@other.test", [], STRICT, Result.YES, "same-domain",
         id="strict-is-per-domain"),
    case("alice@example.test", "bob@example.test", ["bob@example.test"], STRICT, Result.YES,
         "grant-address", id="grant-address-strict"),
    case("alice@example.test", "Bob@Partner.test", ["bob@partner.test"], DEFAULT, Result.YES,
         "grant-address", id="grant-address-caseless"),
    case("alice@example.test", "x@partner.test", ["@partner.test"], DEFAULT, Result.YES,
         "grant-domain", id="grant-domain"),
    case("alice@example.test", "x@partner.test", ["@partner.test"], STRICT, Result.YES,
         "grant-domain", id="grant-domain-strict"),
    case("alice@example.test", "x@sub.partner.test", ["@partner.test"], DEFAULT, Result.NO,
         "sender-mismatch", id="grant-domain-not-subdomain"),
    case("alice@example.test", "x@partner.test", ["@sub.partner.test"], DEFAULT, Result.NO,
         "sender-mismatch", id="grant-subdomain-not-parent"),
    case("alice@example.test", "x@partner.test", ["@other.test", "y@partner.test"], DEFAULT,
         Result.NO, "sender-mismatch", id="grants-for-others"),
    case("alice@example.test", "x@partner.test",
         ["garbage grant", "@", "", "@@partner.test", "@partner.test.", " x@partner.test",
          "x@partner.test ", "partner.test", "x@@partner.test"],
         DEFAULT, Result.NO, "sender-mismatch", id="malformed-grants-ignored"),
    case("alice@example.test", "spam@elsewhere.test", [], DEFAULT, Result.NO, "sender-mismatch",
         id="foreign-domain"),
    case("alice@example.test", "a@example.test.evil", [], DEFAULT, Result.NO, "sender-mismatch",
         id="suffix-look-alike"),
    case("alice@example.test", "a@evil-example.test", [], DEFAULT, Result.NO, "sender-mismatch",
         id="prefix-look-alike"),
    case("alice@example.test", "a@evilexample.test", [], DEFAULT, Result.NO, "sender-mismatch",
         id="glued-look-alike"),
    case("alice@example.test", "a@sub.example.test", [], DEFAULT, Result.NO, "sender-mismatch",
         id="subdomain"),
    case("alice@sub.example.test", "a@example.test", [], DEFAULT, Result.NO, "sender-mismatch",
         id="parent-domain"),
    case("alice@example.test", "a@test", [], DEFAULT, Result.NO, "sender-mismatch",
         id="tld"),
    case("alice@example.test", "", [], DEFAULT, Result.NO, "null-sender", id="null-sender"),
    case("alice@example.test", "", ["@example.test"], DEFAULT, Result.NO, "null-sender",
         id="null-sender-despite-grant"),
    case("", "alice@example.test", [], DEFAULT, Result.NO, "empty-id", id="empty-id"),
    case("", "", [], DEFAULT, Result.NO, "empty-id", id="empty-id-null-sender"),
    case("", "x@example.test", ["@example.test"], DEFAULT, Result.NO, "empty-id",
         id="empty-id-despite-grant"),
    case("alice", "alice@example.test", [], DEFAULT, Result.NO, "malformed-id",
         id="id-without-domain"),
    case("@example.test", "x@example.test", [], DEFAULT, Result.NO, "malformed-id",
         id="id-without-local-part"),
    case(" alice@example.test", "alice@example.test", [], DEFAULT, Result.NO, "malformed-id",
         id="id-with-space"),
    case("\udcffalice@example.test", "alice@example.test", [], DEFAULT, Result.NO,
         "malformed-id", id="id-invalid-utf8"),
    case("alice@example.test", '"alice"@example.test', [], DEFAULT, Result.NO,
         "malformed-sender", id="quoted-local-part"),
    case("alice@example.test", '"a b"@example.test', [], DEFAULT, Result.NO,
         "malformed-sender", id="quoted-with-space"),
    case("alice@example.test", "@relay.test:alice@example.test", [], DEFAULT, Result.NO,
         "malformed-sender", id="source-route"),
    case("alice@example.test", "alice@[192.0.2.1]", [], DEFAULT, Result.NO,
         "malformed-sender", id="address-literal"),
    case("alice@example.test", "alice@example.test ", [], DEFAULT, Result.NO,
         "malformed-sender", id="trailing-space"),
    case("alice@example.test", "alice@example.test\x00", [], DEFAULT, Result.NO,
         "malformed-sender", id="trailing-nul"),
    case("alice@example.test", "alice@example.test.", [], DEFAULT, Result.NO,
         "malformed-sender", id="trailing-dot"),
    case("alice@example.test", "<alice@example.test>", [], DEFAULT, Result.NO,
         "malformed-sender", id="angle-brackets"),
    case("alice@example.test", "<>", [], DEFAULT, Result.NO, "malformed-sender",
         id="bracketed-null-sender"),
    case("alice@example.test", "ålice@example.test", [], DEFAULT, Result.NO,
         "malformed-sender", id="non-ascii-local-part"),
    case("alice@example.test", "alice@exämple.test", [], DEFAULT, Result.NO,
         "malformed-sender", id="non-ascii-domain"),
])
def test_relay_decisions(login: str, sender: str, grants: list[str], policy: RelayPolicy,
                         result: Result, reason: str) -> None:
    """Own address, own domain (unless strict) and grants relay; everything else does not."""
    decision = may_relay(login, sender, RCPT, grants, policy)
    assert (decision.result, decision.reason) == (result, reason)


@pytest.mark.parametrize("recipient", ["", " ", "a b@remote.test", "x@remote.test\n", "\x00",
                                       "x@remote.test\t", "x\x7f@remote.test",
                                       "\udcff@remote.test"],
                         ids=["empty", "space", "inner-space", "newline", "nul", "tab", "del",
                              "invalid-utf8"])
def test_malformed_recipient_is_no(recipient: str) -> None:
    """An empty, whitespace or control-character recipient is refused even for one's own address."""
    decision = may_relay("alice@example.test", "alice@example.test", recipient, [], DEFAULT)
    assert (decision.result, decision.reason) == (Result.NO, "malformed-recipient")


def test_every_whitespace_character_in_a_recipient_is_refused() -> None:
    """Every character str.isspace() calls whitespace makes a recipient malformed (the check
    relies on the ASCII space being the only one str.isprintable() lets through)."""
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    assert len(spaces) > 20
    for space in spaces:
        decision = may_relay("alice@example.test", "alice@example.test", f"x{space}@r.test", [],
                             DEFAULT)
        assert decision.reason == "malformed-recipient", hex(ord(space))


@pytest.mark.parametrize("recipient", ["x@remote.test", '"a.b"@remote.test', "postmaster"])
def test_recipient_is_not_held_to_account_syntax(recipient: str) -> None:
    """Only the sender must be a plain address; any recipient Exim accepted is judged by it."""
    decision = may_relay("alice@example.test", "alice@example.test", recipient, [], DEFAULT)
    assert decision.allowed


def test_grants_may_be_any_iterable() -> None:
    """Grants read lazily from a generator (e.g. a database cursor) work."""
    grants = (grant for grant in ["@other.test", "x@partner.test"])
    assert may_relay("alice@example.test", "x@partner.test", RCPT, grants, DEFAULT).allowed


def test_relay_policy_is_a_frozen_value() -> None:
    """A policy cannot be changed under a running service, and defaults to no strict domains."""
    assert DEFAULT.strict_domains == frozenset()
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.strict_domains = frozenset({"x.test"})  # type: ignore[misc]


# --- properties ------------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=3).map(".".join)
_address = st.builds(lambda local, domain: f"{local}@{domain}", _label, _domain)


def _shuffle_case(text: str, flips: list[bool]) -> str:
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips + [False] * len(text),
                                                             strict=False))


@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[str, str, list[str], bool]:
    """A login, a sender that is often related to it, some grants, and strictness."""
    login = draw(_address)
    local, domain = login.split("@")
    grants = draw(st.lists(_address | _domain.map(lambda d: "@" + d), max_size=3))
    sender = draw(st.one_of(
        st.just(login),
        st.lists(st.booleans(), max_size=30).map(lambda flips: _shuffle_case(login, flips)),
        _label.map(lambda other: f"{other}@{domain}"),
        _label.map(lambda other: f"{local}@{other}.{domain}"),
        _label.map(lambda other: f"{local}@{domain}.{other}"),
        _label.map(lambda other: f"{local}@{other}{domain}"),
        st.sampled_from(grants) if grants else st.just(""),
        _label.map(lambda other: f"{other}{grants[0]}" if grants else other),
        _address,
        st.just(""),
        st.text(max_size=40),
    ))
    return login, sender, grants, draw(st.booleans())


@given(_scenarios())
def test_yes_only_with_a_reason_that_holds(scenario: tuple[str, str, list[str], bool]) -> None:
    """A yes always rests on same address, same domain (not strict) or a matching grant."""
    login, sender, grants, strict = scenario
    login_domain = login.split("@")[1]
    policy = RelayPolicy(frozenset({login_domain})) if strict else DEFAULT
    decision = may_relay(login, sender, RCPT, grants, policy)
    assert decision.reason in (YES_REASONS if decision.allowed else NO_REASONS)
    assert decision.result in {Result.YES, Result.NO}
    try:
        canonical = str(parse_address(sender))
    except AddressError:
        assert not decision.allowed
        return
    sender_domain = canonical.split("@")[1]
    holds = {
        "same-address": canonical == login,
        "grant-address": canonical in grants,
        "grant-domain": "@" + sender_domain in grants,
        "same-domain": not strict and sender_domain == login_domain,
    }
    # Sound: a yes names a rule that holds.  Complete: if any rule holds, the answer is yes.
    if decision.allowed:
        assert holds[decision.reason]
    else:
        assert not any(holds.values())


@given(login=_address, extra=_label, grants=st.lists(_address, max_size=2),
       strict=st.booleans())
def test_look_alike_domains_never_match(login: str, extra: str, grants: list[str],
                                        strict: bool) -> None:
    """Suffix, prefix and subdomain look-alikes of the login's domain are other domains."""
    local, domain = login.split("@")
    policy = RelayPolicy(frozenset({domain})) if strict else DEFAULT
    for fake in (f"{domain}.{extra}", f"{extra}{domain}", f"{extra}.{domain}",
                 f"{extra}-{domain}", f"{extra}.{domain}.{extra}"):
        sender = f"{local}@{fake}"
        decision = may_relay(login, sender, RCPT, [g for g in grants if g != sender], policy)
        assert (decision.result, decision.reason) == (Result.NO, "sender-mismatch")


@given(sender=st.text(max_size=60), recipient=st.text(max_size=60),
       grants=st.lists(st.text(max_size=20), max_size=3))
def test_empty_id_is_never_yes(sender: str, recipient: str, grants: list[str]) -> None:
    """The seed's spammer (authenticated with an empty id) never relays, whatever the grants."""
    grants = [*grants, sender, "@" + sender.rpartition("@")[2]]
    decision = may_relay("", sender, recipient, grants, DEFAULT)
    assert (decision.result, decision.reason) == (Result.NO, "empty-id")


@given(login=_address, recipient=st.text(max_size=60), strict=st.booleans())
def test_null_sender_is_never_yes(login: str, recipient: str, strict: bool) -> None:
    """Bounces from an authenticated client are refused, even with a grant for its own domain."""
    domain = login.split("@")[1]
    policy = RelayPolicy(frozenset({domain})) if strict else DEFAULT
    decision = may_relay(login, "", recipient, ["@" + domain, login], policy)
    assert (decision.result, decision.reason) == (Result.NO, "null-sender")


def test_a_relay_read_at_the_edge_keeps_every_field_the_later_layers_use() -> None:
    """read_relay hands on the canonical addresses, the recipient as sent and the transaction
    (the rate limiter counts messages by it); without one the transaction is empty."""
    relay = read_relay("Alice@Example.TEST", "alice@EXAMPLE.test", "Bob@Remote.test", "tx-1")
    assert relay == Relay(parse_address(ALICE), parse_address(ALICE), "Bob@Remote.test", "tx-1")
    untracked = read_relay(ALICE, ALICE, "bob@remote.test")
    assert isinstance(untracked, Relay)
    assert untracked.transaction == ""


def test_decide_relay_takes_what_was_read_and_may_relay_is_the_two_together() -> None:
    """The string entry point gives the answers of read_relay then decide_relay."""
    relay = read_relay(ALICE, "carol@example.test", "bob@remote.test")
    assert isinstance(relay, Relay)
    strict = RelayPolicy(frozenset({"example.test"}))
    assert decide_relay(relay, (), RelayPolicy()).reason is Reason.SAME_DOMAIN
    assert decide_relay(relay, (), strict).reason is Reason.SENDER_MISMATCH
    assert may_relay(ALICE, "carol@example.test", "bob@remote.test", (), strict) == \
        decide_relay(relay, (), strict)
