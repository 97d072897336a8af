"""The SMTP client a request comes from, read once: its address and the network it counts under.

Exim sends ``$sender_host_address``: empty for a local submission, else an IPv4 or IPv6
address.  The throttle counts failures per network (an IPv4 address, an IPv6 /64 by default)
and the AUTH cache keys successes by network, so both take the network read here rather than
parse the address again.  Pure.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

__all__ = ["NO_ADDRESS", "Client", "read_client"]

# The network of a request that carries no client address (a local submission, say).
NO_ADDRESS = "no-address"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Client:
    """A request's client: ``ip`` as sent, its parsed ``address`` and its ``network``
    (``"2001:db8::/64"``); ``address`` and ``network`` are None without a usable address."""

    ip: str
    address: IPAddress | None
    network: str | None

    @property
    def counted_as(self) -> str:
        """The network the throttle counts this client under: never none at all."""
        return self.network or NO_ADDRESS


def _client_address(client_ip: str) -> IPAddress | None:
    """The client's address, an IPv4-mapped IPv6 one as the IPv4 it carries; None if none."""
    if not client_ip:
        return None
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def read_client(client_ip: str, ipv4_prefix: int, ipv6_prefix: int) -> Client:
    """``read_client("2001:db8::1", 32, 64).network == "2001:db8::/64"``.  Pure.

    An IPv4-mapped IPv6 address counts as the IPv4 address it carries.  Memoised: clients
    come back, and :mod:`ipaddress` is slow next to everything else on the cached AUTH path.
    """
    return _memo(client_ip, ipv4_prefix, ipv6_prefix)


def _read(client_ip: str, ipv4_prefix: int, ipv6_prefix: int) -> Client:
    ip = _client_address(client_ip)
    if ip is None:
        return Client(client_ip, None, None)
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return Client(client_ip, ip, str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False)))


# Not a decorator on read_client: the tests clear it, so that they test the reading itself.
_memo = functools.lru_cache(maxsize=4096)(_read)
