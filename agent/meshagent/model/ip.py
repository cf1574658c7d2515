"""Addresses and networks of either family, as the policy model and the datapath's state use them."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def host_network(address: IPAddress) -> IPNetwork:
    """The single-address prefix of `address` (/32 or /128)."""
    if isinstance(address, IPv6Address):
        return IPv6Network(address)
    return IPv4Network(address)


def is_host_prefix(prefix: IPNetwork) -> bool:
    return prefix.prefixlen == prefix.max_prefixlen
