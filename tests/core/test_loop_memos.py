"""The event loop's remembered parses (addresses, client addresses), attacked: a memo must never
answer one input with another input's result, must keep no refusal and must stay bounded
whatever a client sends."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eximauthd.core import addresses, protocol
from eximauthd.core.addresses import Address, parse_address
from eximauthd.core.protocol import parse_client_ip, parse_request
from eximauthd.errors import AddressError, ProtocolError

# Each row: an address that parses, then texts that look like it and must not be it.
LOOK_ALIKES = [
    ("boss@muller.test", ["boss@m\u00fcller.test", "boss@mu\u0308ller.test", "boss@muller.test ",
                          " boss@muller.test", "boss@muller.test.", "boss@muller.test\x00",
                          "boss@muller.test\udcff", "boss@\uff4duller.test",
                          "bo\u017fs@muller.test", "boss@\u212auller.test"]),
    ("alice@example.test", ["alice@example.test\t", "alice@example.test\n",
                            "al\u0131ce@example.test", "alice@ex\u0430mple.test"]),
]


@pytest.mark.parametrize(("good", "bad"), LOOK_ALIKES)
def test_a_remembered_address_never_answers_a_look_alike(good: str, bad: list[str]) -> None:
    """Once an address is remembered, every look-alike (Unicode, whitespace, trailing dot,
    NUL, a surrogate from an undecodable byte) is still refused, before and after it."""
    for text in bad:
        with pytest.raises(AddressError):
            parse_address(text)
    assert parse_address(good) == Address(*good.split("@"))
    for text in bad:
        with pytest.raises(AddressError):
            parse_address(text)


def test_case_variants_are_kept_apart_and_fold_alike() -> None:
    """Two spellings of one account are two memo entries with the same canonical value."""
    first, second = parse_address("Alice@Example.TEST"), parse_address("alice@example.test")
    assert first == second == Address("alice", "example.test")


def test_a_refusal_is_not_kept_and_the_memo_is_bounded() -> None:
    """Thousands of distinct well-formed logins and refusals, some longer than any address:
    the memo keeps at most its size, never a refusal, never an over-long text."""
    known = addresses._known
    known.cache_clear()
    for i in range(500):
        with pytest.raises(AddressError):
            parse_address(f"u{i} @flood.test")
    parse_address("a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 63)
    with pytest.raises(AddressError):
        parse_address("a" * 5000 + "@flood.test")
    assert known.cache_info().currsize == 1  # the longest address is kept, nothing else
    for i in range(10_000):
        parse_address(f"u{i}@flood.test")
    info = known.cache_info()
    assert info.maxsize == 2048
    assert info.currsize == 2048


@pytest.mark.parametrize(("good", "bad"), [
    ("fe80::1", ["fe80::1%eth0", "fe80::1%1", "fe80::1 ", " fe80::1", "fe80::1\x00"]),
    ("192.0.2.1", ["192.0.2.1.", "192.0.2.01", "\uff11\uff19\uff12.0.2.1", "192.0.2.1/32",
                   "192.0.2.1\udcff"]),
    ("::ffff:192.0.2.1", ["::ffff:192.0.2.1%0", "::ffff:192.0.2.256"]),
])
def test_a_remembered_client_address_never_answers_a_look_alike(good: str,
                                                                bad: list[str]) -> None:
    """Scope ids, padding, non-ASCII digits, prefixes: refused before and after the bare
    address is remembered."""
    for text in bad:
        with pytest.raises(ProtocolError):
            parse_client_ip(text)
    assert parse_client_ip(good) == good
    for text in bad:
        with pytest.raises(ProtocolError):
            parse_client_ip(text)


def test_the_client_address_memo_is_bounded() -> None:
    """A flood of distinct client fields, valid or not, keeps at most the memo's size; a
    field longer than any address is judged without being kept."""
    known = protocol._known_ip
    known.cache_clear()
    for i in range(6000):
        parse_client_ip(f"2001:db8::{i:x}")
        with pytest.raises(ProtocolError):
            parse_client_ip(f"2001:db8::{i:x}%eth0")
    with pytest.raises(ProtocolError):
        parse_client_ip("1" * 46)
    with pytest.raises(ProtocolError):
        parse_client_ip("0:0:0:0:0:ffff:" + "0" * 40 + "1.2.3.4")
    info = known.cache_info()
    assert info.maxsize == 4096
    assert info.currsize == 4096


def _strict_stdlib(field: str) -> bytes | None:
    try:
        return base64.b64decode(field, validate=True)
    except (binascii.Error, ValueError):
        return None


_B64_PIECES = st.sampled_from(["YQ", "YWJj", "==", "=", "A", "+", "/", "-", "_", "\t", " ",
                               "\x00", "\n", "\r", "\u00e9", "\udcff", "YW=j", "Zm9v", "====",
                               "YQ==", "AAAA"])


@settings(max_examples=2000, deadline=None)
@given(st.lists(_B64_PIECES, min_size=1, max_size=8).map("".join))
def test_base64_fields_are_exactly_the_strict_stdlib_ones(field: str) -> None:
    """The loop's base64 decoding accepts exactly what base64.b64decode(validate=True)
    accepts (whitespace, missing or excess padding, other alphabets, NUL, non-ASCII: refused),
    and decodes to the same bytes."""
    expected = _strict_stdlib(field)
    try:
        decoded: str | None = protocol._decode(field)
    except ProtocolError as exc:
        assert exc.reason == "bad-base64"
        decoded = None
    if expected is None:
        assert decoded is None, repr(field)
    else:
        assert decoded == expected.decode("utf-8", "surrogateescape"), repr(field)


@pytest.mark.parametrize("field", ["YQ", "YQ=", "Y Q==", "YQ==\t", "YQ==YQ==", "=YQ=", "YQ-_",
                                   "YQ==\x00"])
def test_a_non_strict_base64_username_is_refused_on_the_wire(field: str) -> None:
    """A RELAY or AUTH whose base64 is not strict never becomes a request."""
    line = f"AUTH PLAIN {field} cGFzcw== 192.0.2.1\n".encode()
    with pytest.raises(ProtocolError) as caught:
        parse_request(line)
    assert caught.value.reason in {"bad-base64", "not-ascii", "wrong-field-count"}
