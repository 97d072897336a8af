"""Account addresses: strict parsing, canonical lower case."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximauthd.core import addresses
from eximauthd.core.addresses import Address, parse_address, stored_address
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


# --- RFC 5321's limits, at the edge and one past it (mutants of _MAX_LOCAL/_MAX_DOMAIN) -----

# A 255-octet domain made of legal labels (63 + 1 + 63 + 1 + 63 + 1 + 63 = 255).
DOMAIN_255 = ".".join(["d" * 63] * 4)


def test_a_64_octet_local_part_is_accepted() -> None:
    """A local part of exactly 64 octets, RFC 5321's maximum, names an account."""
    assert parse_address("l" * 64 + "@example.test") == Address("l" * 64, "example.test")


def test_a_65_octet_local_part_is_refused_as_too_long() -> None:
    """One octet over the local-part limit is refused for its length, not its syntax."""
    with pytest.raises(AddressError, match="too long"):
        parse_address("l" * 65 + "@example.test")


def test_a_255_octet_domain_is_accepted() -> None:
    """A domain of exactly 255 octets, RFC 5321's maximum, is a domain."""
    assert len(DOMAIN_255) == 255
    assert parse_address("alice@" + DOMAIN_255) == Address("alice", DOMAIN_255)


def test_a_256_octet_domain_of_legal_labels_is_refused_as_too_long() -> None:
    """One octet over the domain limit is refused although every label is legal."""
    domain = ".".join(["d" * 63] * 3 + ["d" * 61, "dd"])
    assert len(domain) == 256
    with pytest.raises(AddressError, match="too long"):
        parse_address("alice@" + domain)


def test_a_domain_label_of_63_is_accepted_and_64_refused() -> None:
    """DNS labels are at most 63 characters (the regex's {0,61} plus both ends)."""
    assert parse_address("a@" + "x" * 63 + ".test").domain == "x" * 63 + ".test"
    with pytest.raises(AddressError, match="invalid domain"):
        parse_address("a@" + "x" * 64 + ".test")


def test_the_last_at_sign_splits_local_part_from_domain() -> None:
    """With two ``@`` the split is at the last one, so the local part is the one refused."""
    with pytest.raises(AddressError, match="invalid local part"):
        parse_address("a@b@example.test")


@pytest.mark.parametrize(("text", "message"), [
    ("alice", "expected local@domain"),
    ("@example.test", "expected local@domain"),
    ("alice@", "expected local@domain"),
    ("älice@example.test", "not an ASCII address"),
    ("a b@example.test", "invalid local part"),
    ("alice@exa_mple.test", "invalid domain"),
])
def test_each_refusal_says_what_is_wrong_and_quotes_the_input(text: str, message: str) -> None:
    """The error names the fault and quotes the input, so an admin can find the row."""
    with pytest.raises(AddressError) as refused:
        parse_address(text)
    assert message in str(refused.value)
    assert repr(text) in str(refused.value)


@pytest.mark.parametrize("text", [
    "x" * 65 + "@example.test",            # too long
    "x" * 70 + " @example.test",           # invalid local part
    "ä" + "x" * 80 + "@example.test",      # not ASCII
    "x" * 100,                             # no @ at all
])
def test_an_error_quotes_at_most_the_first_64_characters(text: str) -> None:
    """A hostile username cannot make the error (and the log line) longer than 64 chars of it."""
    with pytest.raises(AddressError) as refused:
        parse_address(text)
    assert repr(text[:64]) in str(refused.value)
    assert repr(text[:65]) not in str(refused.value)


ALICE = Address("alice", "example.test")


@pytest.mark.parametrize("parts", [
    ("alice@example.test",),
    ("Alice@Example.TEST",),
    (b"alice@example.test",),
    (bytearray(b"alice@example.test"),),
    (memoryview(b"ALICE@example.test"),),
    ("alice", "example.test"),
    ("ALICE", b"Example.Test"),
])
def test_a_stored_row_names_its_account_whatever_the_case_or_column_type(
        parts: tuple[object, ...]) -> None:
    """One address column or local part + domain, text or binary: the same folded account."""
    assert stored_address(*parts) == ALICE


@pytest.mark.parametrize("parts", [
    (),                                          # no column at all
    ("alice", "example", "test"),                # three parts
    ("alice@example.test ",),                    # padding (a CHAR column, a trailing blank)
    (" alice@example.test",),
    ("alice@example.test\n",),
    ("alice\u212a@example.test",),               # a look-alike (Kelvin sign) folds to k
    (b"alice@example.test\xff",),               # not ASCII bytes
    (b"\xc3\xa4lice@example.test",),
    (None,),                                     # NULL
    (42,),                                       # a number column
    ("alice", None),
    ("alice@example.test", "example.test"),      # an "@" inside the local-part column
    ("alice", "evil.test@example.test"),         # an "@" inside the domain column
    ("", "example.test"),
    ("alice", ""),
])
def test_a_stored_row_that_is_not_exactly_an_address_names_no_account(
        parts: tuple[object, ...]) -> None:
    """Padding, look-alikes, undecodable bytes, NULLs and "@" inside a column name nobody."""
    assert stored_address(*parts) is None


@pytest.mark.parametrize("text", ["Alice@Example.TEST", "alice@example.test", "a@b.c"])
def test_a_remembered_address_is_the_same_answer_as_a_fresh_one(text: str) -> None:
    """The memo gives back exactly what parsing gives: twice in a row, and after forgetting."""
    first = parse_address(text)
    assert parse_address(text) == first
    addresses._known.cache_clear()
    assert parse_address(text) == first


def test_a_refused_address_is_refused_every_time() -> None:
    """A refusal is not remembered as an answer: the second try is refused too."""
    for _ in range(2):
        with pytest.raises(AddressError):
            parse_address("not an address")


@pytest.mark.parametrize("length", [321, 322, 5000])
def test_a_text_longer_than_any_address_is_refused_as_one(length: int) -> None:
    """Past RFC 5321's 320 octets a text is parsed (and refused) without being remembered."""
    text = "a" * 64 + "@" + "b" * (length - 65)
    with pytest.raises(AddressError):
        parse_address(text)
