"""The one-node topology itself: every pod is dual-stack unless a test opts out, the IPv6 address is
derived from the IPv4 one unless given, and both families route between pods through the node."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from meshagent.testing.topology import DERIVED_POD_NETWORK6, Topology, derived_ipv6_of

pytestmark = pytest.mark.kernel


def test_pods_are_dual_stack_by_default_with_derived_addresses() -> None:
    with Topology() as topo:
        _check_dual_stack_by_default(topo)


def _check_dual_stack_by_default(topo: Topology) -> None:
    a = topo.add_pod("a", "10.244.3.10")
    b = topo.add_pod("b", "10.244.3.20", ipv6="fd00:3::20")
    assert a.ipv6 == derived_ipv6_of(IPv4Address("10.244.3.10")) == IPv6Address("fd00:64::af4:30a")
    assert a.ipv6 in DERIVED_POD_NETWORK6
    assert b.ipv6 == IPv6Address("fd00:3::20")
    b.serve(tcp=(80,), udp=(80,))
    for address in (b.ip, b.ipv6):
        assert a.probe("tcp", address, 80)["ok"], address
        assert a.probe("udp", address, 80)["ok"], address
    assert a.ping(b.ipv6)


def test_an_ipv4_only_pod_has_no_global_ipv6_address() -> None:
    with Topology() as topo:
        _check_ipv4_only(topo)


def _check_ipv4_only(topo: Topology) -> None:
    a = topo.add_pod("a", "10.244.3.11", ipv6=False)
    b = topo.add_pod("b", "10.244.3.21")
    assert a.ipv6 is None
    assert "inet6" not in a.run("ip", "-6", "addr", "show", "dev", "eth0", "scope", "global").stdout
    assert b.ipv6 is not None and a.ping(b.ip) and not a.ping(b.ipv6)
