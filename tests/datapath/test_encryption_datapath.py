"""The endpoint programs' part of node-to-node encryption, with real packets on this kernel (which has no
WireGuard: the programs only need the device's ifindex, so a pod's own host-side interface stands in for
it). A packet towards a pod is encrypted when it came in by the device; a packet from a pod when the
node's routes send it out by the device. Only traffic to or from remote pod ranges is judged. Every
test runs on both families: IPv6 goes through the IPv6 programs, ma_wg_remote6 and an AF_INET6 route
lookup, and is counted in the same counters.

    a (10.244.1.10, fd00:1::10) plays a pod of a remote node: its addresses are in ma_wg_remote(6).
    b (10.244.1.20, fd00:1::20) is the local pod under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.maps import wireguard as wg
from meshagent.model.events import DropReason, EventType
from meshagent.model.kernel_state import Direction
from meshagent.testing.topology import Pod, Topology

from tests.datapath.helpers import EventLog, endpoint, state

pytestmark = pytest.mark.kernel

REMOTE_NODE = "node-9"


@dataclass(frozen=True)
class Pair:
    a: Pod
    b: Pod
    family: int

    def address(self, pod: Pod) -> IPv4Address | IPv6Address:
        if self.family == 6:
            assert pod.ipv6 is not None
            return pod.ipv6
        return pod.ip


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def pair(request: pytest.FixtureRequest, topo: Topology, datapath: Datapath) -> Iterator[Pair]:
    a = topo.add_pod("a", "10.244.1.10", ipv6="fd00:1::10")
    b = topo.add_pod("b", "10.244.1.20", ipv6="fd00:1::20")
    a.serve(tcp=(80,))
    b.serve(tcp=(80,))
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2)], [a, b]))
    maps = datapath.encryption_maps
    # Only the family under test is a remote range: the other one shows that each family has its own.
    remote = IPv6Network(f"{a.ipv6}/128") if request.param == 6 else IPv4Network(f"{a.ip}/32")
    maps.set_remote({REMOTE_NODE: (remote,)})
    try:
        yield Pair(a, b, request.param)
    finally:
        maps.set_mode("off", None)
        maps.set_remote({})
        maps.stats.clear()


def counters(datapath: Datapath) -> dict[tuple[Direction, bool], tuple[int, int]]:
    return {
        (c.direction, c.encrypted): (c.packets, c.flows)
        for c in datapath.encryption_maps.counters()
        if c.node_id == wg.node_id(REMOTE_NODE)
    }


def test_strict_drops_plaintext_both_ways_with_its_own_reason(
    datapath: Datapath, pair: Pair, events: EventLog
) -> None:
    a, b = pair.a, pair.b
    a_ip, b_ip = pair.address(a), pair.address(b)
    # The "device" is b's own interface: nothing from a arrives by it, and nothing to a leaves by it.
    datapath.encryption_maps.set_mode("strict", b.ifindex)
    assert not a.probe("tcp", b_ip, 80, timeout=0.5)["ok"], "plaintext from a remote pod is dropped"
    assert not b.probe("tcp", a_ip, 80, timeout=0.5)["ok"], "plaintext to a remote pod is dropped"
    drops = events.wait_for(lambda e: e.drop_reason == DropReason.UNENCRYPTED and e.type == EventType.DROP)
    assert {
        (e.direction, e.saddr, e.daddr) for e in events.events if e.drop_reason == DropReason.UNENCRYPTED
    } >= {
        (Direction.INGRESS, a_ip, b_ip),
        (Direction.EGRESS, b_ip, a_ip),
    }, drops
    assert not any(e.encrypted for e in drops)
    metrics = datapath.counters()
    assert metrics[(DropReason.UNENCRYPTED, Direction.INGRESS)].packets > 0
    assert metrics[(DropReason.UNENCRYPTED, Direction.EGRESS)].packets > 0
    # The other family's addresses are not in a remote range: never judged.
    other = Pair(a, b, 10 - pair.family)
    assert a.probe("tcp", other.address(b), 80)["ok"]
    # Traffic between local pods is not judged: a pod that is not remote is never dropped for it.
    datapath.encryption_maps.set_remote({})
    assert a.probe("tcp", b_ip, 80)["ok"]


def test_strict_passes_what_the_device_carries_and_flags_it(
    datapath: Datapath, pair: Pair, events: EventLog
) -> None:
    a, b = pair.a, pair.b
    b_ip = pair.address(b)
    # Now a's interface plays the device: what a sends arrives by it, and b's replies to a leave by it.
    datapath.encryption_maps.set_mode("strict", a.ifindex)
    result = a.probe("tcp", b_ip, 80)
    assert result["ok"], result
    found = events.wait_for(
        lambda e: e.type == EventType.POLICY_VERDICT and e.direction == Direction.INGRESS and e.daddr == b_ip
    )
    assert found and all(e.encrypted for e in found)
    seen = counters(datapath)
    assert seen[(Direction.INGRESS, True)][0] > 0 and seen[(Direction.INGRESS, True)][1] == 1
    assert seen[(Direction.EGRESS, True)][0] > 0, "b's replies to a left by the device"
    assert (Direction.INGRESS, False) not in seen


def test_permissive_passes_and_counts_plaintext(datapath: Datapath, pair: Pair, events: EventLog) -> None:
    a, b = pair.a, pair.b
    a_ip, b_ip = pair.address(a), pair.address(b)
    datapath.encryption_maps.set_mode("permissive", b.ifindex)
    assert a.probe("tcp", b_ip, 80)["ok"]
    assert b.probe("tcp", a_ip, 80)["ok"]
    seen = counters(datapath)
    assert seen[(Direction.INGRESS, False)][1] == 1, "one plaintext connection from the remote node"
    assert seen[(Direction.EGRESS, False)][1] == 1, "one plaintext connection to the remote node"
    assert not any(e.drop_reason == DropReason.UNENCRYPTED for e in events.events)
    found = events.wait_for(lambda e: e.type == EventType.POLICY_VERDICT and e.daddr == b_ip)
    assert found and not any(e.encrypted for e in found)
