"""The client a request comes from: the network its failures count against and its successes
are cached under."""

from __future__ import annotations

import ipaddress

import pytest

from eximauthd.core import clients
from eximauthd.core.clients import NO_ADDRESS, read_client


@pytest.fixture(autouse=True)
def _unmemoised() -> None:
    """Each test reads its clients afresh, not from an earlier test's memo."""
    clients._memo.cache_clear()


@pytest.mark.parametrize(("ip", "v4", "v6", "expected"), [
    ("192.0.2.7", 32, 64, "192.0.2.7/32"),
    ("192.0.2.7", 24, 64, "192.0.2.0/24"),
    ("192.0.2.7", 0, 64, "0.0.0.0/0"),
    ("::ffff:192.0.2.7", 24, 128, "192.0.2.0/24"),  # mapped: counted as the IPv4 address
    ("::ffff:192.0.2.7", 32, 64, "192.0.2.7/32"),
    ("2001:db8::1", 24, 128, "2001:db8::1/128"),
    ("2001:db8:0:1::1", 32, 48, "2001:db8::/48"),
    ("::1", 32, 64, "::/64"),
])
def test_each_family_uses_its_own_prefix(ip: str, v4: int, v6: int, expected: str) -> None:
    """IPv4 (and IPv4-mapped IPv6) use the IPv4 prefix, IPv6 the IPv6 prefix."""
    assert read_client(ip, v4, v6).network == expected


@pytest.mark.parametrize("ip", ["", "localhost", "192.0.2.300", "2001:db8::g", "1.2.3"])
def test_no_or_an_unparsable_address_has_no_network(ip: str) -> None:
    """Without a usable address nothing is counted per network (the user counter still is)."""
    assert read_client(ip, 32, 64).network is None


@pytest.mark.parametrize(("ip", "expected"), [
    ("192.0.2.7", "192.0.2.7/32"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7/32"),
    ("", None),
    ("not-an-ip", None),
])
def test_failures_are_counted_per_ipv4_address_and_ipv6_64(ip: str, expected: str | None) -> None:
    """Failures count per IPv4 address and IPv6 /64; mapped IPv4 is IPv4; junk has none."""
    assert read_client(ip, 32, 64).network == expected


def test_network_prefixes_are_configurable() -> None:
    """The admin can widen the counted network, e.g. to an IPv4 /24 or an IPv6 /48."""
    assert read_client("192.0.2.7", 24, 64).network == "192.0.2.0/24"
    assert read_client("2001:db8:1:2:3::1", 32, 48).network == "2001:db8:1::/48"


def test_the_client_keeps_the_ip_as_sent_and_its_parsed_address() -> None:
    """A mapped IPv4 client is the IPv4 address it carries; the ip stays as Exim sent it."""
    client = read_client("::ffff:192.0.2.7", 32, 64)
    assert client.ip == "::ffff:192.0.2.7"
    assert client.address == ipaddress.ip_address("192.0.2.7")
    assert client.counted_as == "192.0.2.7/32"


@pytest.mark.parametrize("ip", ["", "not-an-ip"])
def test_a_client_without_an_address_is_counted_under_one_fixed_name(ip: str) -> None:
    """No usable address: no network and no address, and the throttle counts it under
    ``no-address``, never under none."""
    client = read_client(ip, 32, 64)
    assert (client.ip, client.address, client.network) == (ip, None, None)
    assert client.counted_as == NO_ADDRESS
    assert NO_ADDRESS == "no-address"
