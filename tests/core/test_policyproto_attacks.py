"""The Postfix policy reader's whole-request path, attacked: whatever the bytes and however a
hostile client splits them, a request read at once is the request read byte by byte."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from eximauthd.core.policyproto import MAX_LINE_BYTES, Malformed, PolicyReader, PolicyRequest

HEADER = b"request=smtpd_access_policy\n"
AUTHENTICATED = (HEADER + b"protocol_state=RCPT\nsasl_username=alice@example.test\n"
                 b"sender=alice@example.test\nrecipient=r@remote.test\n")

# Lines and fragments that each touch one rule of the line-by-line reader.
_PIECES = st.sampled_from([
    HEADER, b"request=smtpd_access_policy\r\n", b"request=smtpd_access_policy \n",
    b"sasl_username=\n", b"sasl_username=alice@example.test\n", b"sasl_username=bob@x.test\n",
    b"sasl_username=a\x00b\n", b"sasl_username=\xed\xb3\xbf\n", b"sasl_username=\xc3\n",
    b"sasl_username =evil@x.test\n", b"SASL_USERNAME=evil@x.test\n", b"\x00sasl_username=x\n",
    b"protocol_state=RCPT\n", b"protocol_state=DATA\n", b"sender=a@b.test\n",
    b"sender=a@b.test\x85\n", b"sender=\xe2\x80\xa8\n", b"recipient=r@remote.test\n",
    b"instance=\xc3\xa9\n", b"client_address=fe80::1%eth0\n", b"=value\n", b"noequals\n",
    b"n\xc3\xa9=v\n", b"x=\xff\n", b"\n", b"\n\n", b"\r\n", b"=", b"sasl_", b"username=z\n",
    b"a=b\n" * 50, b"x=" + b"y" * (MAX_LINE_BYTES - 3) + b"\n",
    b"x=" + b"y" * MAX_LINE_BYTES + b"\n", b"x=" + b"y" * 1500 + b"\n", AUTHENTICATED,
])


def _read(data: bytes, cuts: list[int]) -> list[PolicyRequest | Malformed]:
    reader = PolicyReader()
    out: list[PolicyRequest | Malformed] = []
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        out += reader.feed(data[start:max(start, cut)])
        start = max(start, cut)
    out += reader.feed(data[start:])
    return out


def _bytewise(data: bytes) -> list[PolicyRequest | Malformed]:
    reader = PolicyReader()
    out: list[PolicyRequest | Malformed] = []
    for i in range(len(data)):
        out += reader.feed(data[i:i + 1])
    return out


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.lists(_PIECES | st.binary(max_size=12), max_size=6).map(
    lambda lines: b"".join(lines) + b"\n"), max_size=5).map(b"".join),
       st.lists(st.integers(min_value=0, max_value=10**6), max_size=4))
@example(AUTHENTICATED + b"sasl_username=\n\n", [])  # a repeat that would hide the login
@example(b"sasl_username=\n" + AUTHENTICATED + b"\n", [])
@example(AUTHENTICATED + b"\n" + AUTHENTICATED + b"sasl_username=\n\n", [5])
@example(b"\n" + AUTHENTICATED + b"\n", [])
def test_any_bytes_any_splits_read_as_byte_by_byte(data: bytes, cuts: list[int]) -> None:
    """The same requests, faults and reasons whether the bytes come at once, in hostile
    pieces, or one at a time (which never takes the whole-request path)."""
    assert _read(data, cuts) == _bytewise(data)


def test_a_repeated_login_attribute_in_one_write_is_malformed() -> None:
    """A repeated sasl_username (empty, then a login) is a fault read at once too: never an
    unauthenticated request that Postfix's other restrictions would let through."""
    for block in (AUTHENTICATED + b"sasl_username=\n\n",
                  HEADER + b"sasl_username=\nprotocol_state=RCPT\nsasl_username=a@b.test\n\n"):
        assert PolicyReader().feed(block) == [Malformed("repeated-attribute")]
