"""The endpoint programs' part of node-to-node encryption, with real packets on this kernel (which has no
WireGuard: the programs only need the device's ifindex, so a pod's own host-side interface stands in for
it). A packet towards a pod is encrypted when it came in by the device; a packet from a pod when the
node's routes send it out by the device. Only traffic to or from remote pod ranges is judged.

    a (10.244.1.10) plays a pod of a remote node: its address is in ma_wg_remote.
    b (10.244.1.20) is the local pod under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.maps import wireguard as wg
from meshagent.model.events import DropReason, EventType
from meshagent.model.kernel_state import Direction
from meshagent.testing.topology import Pod, Topology

from tests.datapath.helpers import EventLog, endpoint, state

pytestmark = pytest.mark.kernel

REMOTE_NODE = "node-9"


@pytest.fixture
def pair(topo: Topology, datapath: Datapath, tmp_path: Path) -> Iterator[tuple[Pod, Pod]]:
    a = topo.add_pod("a", "10.244.1.10")
    b = topo.add_pod("b", "10.244.1.20")
    a.serve(tcp=(80,))
    b.serve(tcp=(80,))
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2)], [a, b]))
    maps = datapath.encryption_maps
    maps.set_remote({REMOTE_NODE: (IPv4Network(f"{a.ip}/32"),)})
    try:
        yield a, b
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
    datapath: Datapath, pair: tuple[Pod, Pod], events: EventLog
) -> None:
    a, b = pair
    # The "device" is b's own interface: nothing from a arrives by it, and nothing to a leaves by it.
    datapath.encryption_maps.set_mode("strict", b.ifindex)
    assert not a.probe("tcp", b.ip, 80, timeout=0.5)["ok"], "plaintext from a remote pod is dropped"
    assert not b.probe("tcp", a.ip, 80, timeout=0.5)["ok"], "plaintext to a remote pod is dropped"
    drops = events.wait_for(lambda e: e.drop_reason == DropReason.UNENCRYPTED and e.type == EventType.DROP)
    assert {
        (e.direction, e.saddr, e.daddr) for e in events.events if e.drop_reason == DropReason.UNENCRYPTED
    } >= {
        (Direction.INGRESS, a.ip, b.ip),
        (Direction.EGRESS, b.ip, a.ip),
    }, drops
    assert not any(e.encrypted for e in drops)
    metrics = datapath.counters()
    assert metrics[(DropReason.UNENCRYPTED, Direction.INGRESS)].packets > 0
    # Traffic between local pods is not judged: a's own egress (to a local pod) is not the question here,
    # and a pod that is not remote is never dropped for it.
    datapath.encryption_maps.set_remote({})
    assert a.probe("tcp", b.ip, 80)["ok"]


def test_strict_passes_what_the_device_carries_and_flags_it(
    datapath: Datapath, pair: tuple[Pod, Pod], events: EventLog
) -> None:
    a, b = pair
    # Now a's interface plays the device: what a sends arrives by it, and b's replies to a leave by it.
    datapath.encryption_maps.set_mode("strict", a.ifindex)
    result = a.probe("tcp", b.ip, 80)
    assert result["ok"], result
    found = events.wait_for(
        lambda e: e.type == EventType.POLICY_VERDICT and e.direction == Direction.INGRESS and e.daddr == b.ip
    )
    assert found and all(e.encrypted for e in found)
    seen = counters(datapath)
    assert seen[(Direction.INGRESS, True)][0] > 0 and seen[(Direction.INGRESS, True)][1] == 1
    assert seen[(Direction.EGRESS, True)][0] > 0, "b's replies to a left by the device"
    assert (Direction.INGRESS, False) not in seen


def test_permissive_passes_and_counts_plaintext(
    datapath: Datapath, pair: tuple[Pod, Pod], events: EventLog
) -> None:
    a, b = pair
    datapath.encryption_maps.set_mode("permissive", b.ifindex)
    assert a.probe("tcp", b.ip, 80)["ok"]
    assert b.probe("tcp", a.ip, 80)["ok"]
    seen = counters(datapath)
    assert seen[(Direction.INGRESS, False)][1] == 1, "one plaintext connection from the remote node"
    assert seen[(Direction.EGRESS, False)][1] == 1, "one plaintext connection to the remote node"
    assert not any(e.drop_reason == DropReason.UNENCRYPTED for e in events.events)
    found = events.wait_for(lambda e: e.type == EventType.POLICY_VERDICT and e.daddr == b.ip)
    assert found and not any(e.encrypted for e in found)
