"""Account addresses: strict parsing, canonical lower case."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximauthd.addresses import Address, parse_address
from eximauthd.errors import AddressError


@pytest.mark.parametrize(("text", "expected"), [
    ("alice@example.test", Address("alice", "example.test")),
    ("Alice.Smith@Example.TEST", Address("alice.smith", "example.test")),
    ("a+tag@sub.example.test", Address("a+tag", "sub.example.test")),
    ("o'neil@example.test", Address("o'neil", "example.test")),
    ("x@localhost", Address("x", "localhost")),
])
def test_valid_addresses_are_canonicalised(text: str, expected: Address) -> None:
    """Case is folded; nothing else changes."""
    assert parse_address(text) == expected
    assert str(parse_address(text)) == f"{expected.local}@{expected.domain}"


@pytest.mark.parametrize("text", [
    "", "alice", "@example.test", "alice@", "alice@@example.test", "a b@example.test",
    "alice@example.test ", " alice@example.test", "alice@example.test\n", "alice\x00@x.test",
    '"quoted"@example.test', "@relay.test:alice@example.test", "alice@[192.0.2.1]",
    "alice@-bad.test", "alice@bad-.test", "alice@example..test", ".alice@example.test",
    "alice.@example.test", "a..b@example.test", "alice@example.test.", "alice@exa_mple.test",
    "x" * 65 + "@example.test", "alice@" + "a" * 256, "älice@example.test", "alice@exämple.test",
])
def test_invalid_addresses_are_refused(text: str) -> None:
    """Anything that is not a plain dot-atom@domain is an AddressError."""
    with pytest.raises(AddressError):
        parse_address(text)


@given(st.text(max_size=400))
def test_parse_never_raises_anything_else(text: str) -> None:
    """Arbitrary input either parses to a lower-case address or raises AddressError."""
    try:
        address = parse_address(text)
    except AddressError as exc:
        assert str(exc)
    else:
        assert str(address) == text.lower()


@pytest.mark.parametrize("text", ["\udcffalice@example.test", "alice@example.test\udc80"])
def test_undecodable_bytes_are_an_address_error(text: str) -> None:
    """Surrogate-escaped bytes from the socket are refused like any other bad address."""
    with pytest.raises(AddressError):
        parse_address(text)
