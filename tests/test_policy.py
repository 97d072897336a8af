"""The relay decision: the envelope sender must belong to the login."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximauthd.decision import Result
from eximauthd.policy import RelayPolicy, may_relay

DEFAULT = RelayPolicy()
STRICT = RelayPolicy(frozenset({"example.test"}))
RCPT = "someone@remote.test"


@pytest.mark.parametrize(("login", "sender", "grants", "policy", "result", "reason"), [
    ("alice@example.test", "alice@example.test", [], DEFAULT, Result.YES, "same-address"),
    ("alice@example.test", "ALICE@Example.TEST", [], STRICT, Result.YES, "same-address"),
    ("Alice@EXAMPLE.test", "bob@example.test", [], DEFAULT, Result.YES, "same-domain"),
    ("alice@example.test", "bob@example.test", [], STRICT, Result.NO, "sender-mismatch"),
    ("alice@example.test", "bob@example.test", ["bob@example.test"], STRICT, Result.YES,
     "grant-address"),
    ("alice@example.test", "x@partner.test", ["@partner.test"], DEFAULT, Result.YES,
     "grant-domain"),
    ("alice@example.test", "x@partner.test", ["@partner.test"], STRICT, Result.YES,
     "grant-domain"),
    ("alice@example.test", "x@sub.partner.test", ["@partner.test"], DEFAULT, Result.NO,
     "sender-mismatch"),
    ("alice@example.test", "x@partner.test", ["@other.test", "y@partner.test"], DEFAULT,
     Result.NO, "sender-mismatch"),
    ("alice@example.test", "x@partner.test", ["garbage grant", "@", ""], DEFAULT, Result.NO,
     "sender-mismatch"),
    ("alice@example.test", "spam@elsewhere.test", [], DEFAULT, Result.NO, "sender-mismatch"),
    ("alice@example.test", "a@example.test.evil", [], DEFAULT, Result.NO, "sender-mismatch"),
    ("alice@example.test", "a@evil-example.test", [], DEFAULT, Result.NO, "sender-mismatch"),
    ("alice@example.test", "a@sub.example.test", [], DEFAULT, Result.NO, "sender-mismatch"),
    ("alice@example.test", "a@test", [], DEFAULT, Result.NO, "sender-mismatch"),
    ("alice@example.test", "", [], DEFAULT, Result.NO, "null-sender"),
    ("", "alice@example.test", [], DEFAULT, Result.NO, "empty-id"),
    ("", "", [], DEFAULT, Result.NO, "empty-id"),
    ("alice", "alice@example.test", [], DEFAULT, Result.NO, "malformed-id"),
    ("alice@example.test", '"alice"@example.test', [], DEFAULT, Result.NO, "malformed-sender"),
    ("alice@example.test", '"a b"@example.test', [], DEFAULT, Result.NO, "malformed-sender"),
    ("alice@example.test", "@relay.test:alice@example.test", [], DEFAULT, Result.NO,
     "malformed-sender"),
    ("alice@example.test", "alice@[192.0.2.1]", [], DEFAULT, Result.NO, "malformed-sender"),
    ("alice@example.test", "alice@example.test ", [], DEFAULT, Result.NO, "malformed-sender"),
    ("alice@example.test", "alice@example.test\x00", [], DEFAULT, Result.NO,
     "malformed-sender"),
    ("alice@example.test", "<alice@example.test>", [], DEFAULT, Result.NO, "malformed-sender"),
])
def test_relay_decisions(login: str, sender: str, grants: list[str], policy: RelayPolicy,
                         result: Result, reason: str) -> None:
    """Own address, own domain (unless strict) and grants relay; everything else does not."""
    decision = may_relay(login, sender, RCPT, grants, policy)
    assert (decision.result, decision.reason) == (result, reason)


@pytest.mark.parametrize("recipient", ["", " ", "a b@remote.test", "x@remote.test\n", "\x00"])
def test_malformed_recipient_is_no(recipient: str) -> None:
    """An empty or whitespace recipient is refused even for the user's own address."""
    decision = may_relay("alice@example.test", "alice@example.test", recipient, [], DEFAULT)
    assert decision.reason == "malformed-recipient"


_label = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=3).map(".".join)
_address = st.builds(lambda local, domain: f"{local}@{domain}", _label, _domain)


@given(login=_address, sender=st.one_of(_address, st.text(max_size=40)),
       grants=st.lists(st.one_of(_address, _domain.map(lambda d: "@" + d)), max_size=3),
       strict=st.booleans())
def test_yes_only_with_a_reason_that_holds(login: str, sender: str, grants: list[str],
                                           strict: bool) -> None:
    """A yes always rests on same address, same domain (not strict) or a matching grant."""
    login_domain = login.split("@")[1]
    policy = RelayPolicy(frozenset({login_domain})) if strict else DEFAULT
    decision = may_relay(login, sender, RCPT, grants, policy)
    if decision.result is not Result.YES:
        return
    sender_l = sender.lower()
    sender_domain = sender_l.rpartition("@")[2]
    assert (sender_l == login
            or (not strict and sender_domain == login_domain)
            or sender_l in grants
            or "@" + sender_domain in grants)


@given(login=_address, extra=_label, grants=st.lists(_address, max_size=2))
def test_look_alike_domains_never_match(login: str, extra: str, grants: list[str]) -> None:
    """Suffix, prefix and subdomain look-alikes of the login's domain are other domains."""
    local, domain = login.split("@")
    for fake in (f"{domain}.{extra}", f"{extra}{domain}", f"{extra}.{domain}",
                 f"{extra}-{domain}"):
        decision = may_relay(login, f"{local}@{fake}", RCPT,
                             [g for g in grants if not g.endswith(fake)], DEFAULT)
        assert decision.result is Result.NO


@given(sender=st.text(max_size=60), recipient=st.text(max_size=60))
def test_empty_id_is_never_yes(sender: str, recipient: str) -> None:
    """The seed's spammer (authenticated with an empty id) never relays."""
    assert may_relay("", sender, recipient, ["@" + sender.rpartition("@")[2]],
                     DEFAULT).reason == "empty-id"


@given(login=_address, recipient=st.text(max_size=60))
def test_null_sender_is_never_yes(login: str, recipient: str) -> None:
    """Bounces from an authenticated client are refused."""
    assert may_relay(login, "", recipient, ["@" + login.split("@")[1]], DEFAULT).result \
        is Result.NO
