"""IPv6 policy enforcement with real packets between dual-stack and IPv6-only pods: the same policy
entries judge both families when the ipcache gives both addresses one identity (the compiler marks a
pod's IPv6 one, so that ipBlocks judge each family apart), the pod's own IPv6 address is the only source
it may use, and neighbour discovery keeps working under policy."""

from __future__ import annotations

import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Network
from pathlib import Path

import pytest
from meshagent.datapath.datapath import Datapath
from meshagent.model.events import DropReason, EventType
from meshagent.model.kernel_state import (
    IDENTITY_ANY,
    IDENTITY_HOST,
    Action,
    Direction,
    EndpointEntry,
    IPCacheEntry,
    KernelState,
    PolicyEntry,
    Protocol,
    Verdict,
    family6_identity,
)
from meshagent.testing.topology import GATEWAY6, Pod, Topology

from tests.datapath.helpers import EventLog, endpoint, identity_of, state

pytestmark = pytest.mark.kernel


def rule(
    endpoint_id: int,
    peer: int,
    protocol: Protocol,
    port: int = 0,
    *,
    direction: Direction = Direction.INGRESS,
    action: Action = Action.ALLOW,
    rule_id: int = 21,
) -> PolicyEntry:
    return PolicyEntry(endpoint_id, direction, peer, protocol, port, port, action, rule_id)


@pytest.fixture
def dual(topo: Topology, tmp_path: Path) -> tuple[Pod, Pod, Pod]:
    """Dual-stack clients a and c, dual-stack server b with TCP 80, 81 and UDP 53 on both families."""
    a = topo.add_pod("a", "10.244.6.10", ipv6="fd00:6::10")
    b = topo.add_pod("b", "10.244.6.20", ipv6="fd00:6::20")
    c = topo.add_pod("c", "10.244.6.30", ipv6="fd00:6::30")
    b.serve(tcp=(80, 81), udp=(53,), log=tmp_path / "b.log")
    return a, b, c


def test_one_policy_judges_both_families(
    datapath: Datapath, dual: tuple[Pod, Pod, Pod], events: EventLog
) -> None:
    a, b, c = dual
    assert b.ipv6 is not None
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2), endpoint(c, 3)], dual))
    assert a.probe("tcp", b.ipv6, 80)["ok"], "no policy: IPv6 passes"
    assert a.probe("udp", b.ipv6, 53)["ok"]
    assert a.run("ping", "-6", "-c", "1", "-W", "1", str(b.ipv6)).returncode == 0
    allowed = events.wait_for(
        lambda e: e.type == EventType.POLICY_VERDICT and e.dport == 80 and e.direction == Direction.INGRESS
    )
    assert allowed and allowed[0].verdict == Verdict.ALLOWED and allowed[0].src_identity == identity_of(a)
    # IPv6 packets' events carry their IPv6 addresses (their own ring buffer, ma_events6).
    assert (allowed[0].saddr, allowed[0].daddr) == (a.ipv6, b.ipv6)

    datapath.apply(
        state(
            [endpoint(a, 1), endpoint(b, 2, enforce_ingress=True), endpoint(c, 3)],
            dual,
            [rule(2, identity_of(a), Protocol.TCP, 80)],
        )
    )
    events.clear()
    for family_of_b in (b.ip, b.ipv6):
        assert a.probe("tcp", family_of_b, 80)["ok"], f"a -> {family_of_b}:80 is allowed"
        assert not a.probe("tcp", family_of_b, 81, timeout=0.5)["ok"], "another port is not"
        assert not c.probe("tcp", family_of_b, 80, timeout=0.5)["ok"], "another peer is not"
        assert not a.probe("udp", family_of_b, 53, timeout=0.5)["ok"], "another protocol is not"
    denied = events.wait_for(
        lambda e: (
            e.type == EventType.DROP
            and e.drop_reason == DropReason.POLICY_DEFAULT_DENY
            and e.src_identity == identity_of(c)
        )
    )
    assert denied and denied[0].endpoint_id == 2 and denied[0].dport == 80
    assert {(e.saddr, e.daddr) for e in denied} <= {(c.ip, b.ip), (c.ipv6, b.ipv6)}
    assert (c.ipv6, b.ipv6) in {(e.saddr, e.daddr) for e in denied}, "the IPv6 drop names its addresses"
    # The IPv6 connection was tracked in the IPv6 table, both ways counted.
    tracked = [
        conn
        for conn in datapath.connections()
        if conn.saddr == a.ipv6 and conn.daddr == b.ipv6 and conn.dport == 80 and conn.ifindex == b.ifindex
    ]
    assert tracked and tracked[0].packets_rev > 0 and tracked[0].verdict == Verdict.ALLOWED


def test_a_deny_rule_and_an_egress_policy_hold_on_ipv6(
    datapath: Datapath, dual: tuple[Pod, Pod, Pod]
) -> None:
    a, b, c = dual
    assert b.ipv6 is not None
    datapath.apply(
        state(
            [endpoint(a, 1, enforce_egress=True), endpoint(b, 2), endpoint(c, 3)],
            dual,
            [
                rule(1, IDENTITY_ANY, Protocol.TCP, direction=Direction.EGRESS),
                rule(1, identity_of(b), Protocol.TCP, 81, direction=Direction.EGRESS, action=Action.DENY),
            ],
        )
    )
    assert a.probe("tcp", b.ipv6, 80)["ok"]
    assert not a.probe("tcp", b.ipv6, 81, timeout=0.5)["ok"], "the deny wins over the broader allow"
    assert not a.probe("udp", b.ipv6, 53, timeout=0.5)["ok"], "egress allows TCP only"
    assert c.probe("udp", b.ipv6, 53)["ok"], "c is not under policy"


def test_ipv6_only_pod_is_enforced(datapath: Datapath, topo: Topology, tmp_path: Path) -> None:
    a = topo.add_pod("a", "10.244.6.11", ipv6="fd00:6::11")
    c = topo.add_pod("c", "10.244.6.31", ipv6="fd00:6::31")
    # A pod with no IPv4 address in the cluster (its veth still holds one: the topology needs it).
    six = topo.add_pod("six", "10.244.6.41", ipv6="fd00:6::41")
    six.serve(tcp=(80,), log=tmp_path / "six.log")
    assert six.ipv6 is not None
    only_v6 = EndpointEntry(
        ifindex=six.ifindex,
        endpoint_id=4,
        identity=identity_of(six),
        ipv4=IPv4Address(0),
        ipv6=six.ipv6,
        enforce_ingress=True,
    )
    datapath.apply(
        state(
            [endpoint(a, 1), endpoint(c, 3), only_v6],
            [a, c, six],
            [rule(4, identity_of(a), Protocol.TCP, 80)],
        )
    )
    assert a.probe("tcp", six.ipv6, 80)["ok"]
    assert not c.probe("tcp", six.ipv6, 80, timeout=0.5)["ok"], "a deny-by-default holds on IPv6"
    # Every IPv4 source is foreign to a pod without an IPv4 address.
    counters_before = datapath.counters()[(DropReason.SPOOFED_SOURCE, Direction.EGRESS)].packets
    six.run("ping", "-c", "1", "-W", "1", str(a.ip))
    assert datapath.counters()[(DropReason.SPOOFED_SOURCE, Direction.EGRESS)].packets > counters_before


def test_only_the_pods_own_ipv6_source_leaves_it(
    datapath: Datapath, dual: tuple[Pod, Pod, Pod], events: EventLog
) -> None:
    a, b, _c = dual
    assert b.ipv6 is not None
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2)], dual))
    a.run("ip", "-6", "addr", "add", "fd00:6::99/128", "dev", "eth0", "nodad")
    assert a.probe("udp", b.ipv6, 53)["ok"]
    assert not a.probe("udp", b.ipv6, 53, bind="fd00:6::99", timeout=0.5)["ok"]
    spoofed = events.wait_for(lambda e: e.drop_reason == DropReason.SPOOFED_SOURCE and e.endpoint_id == 1)
    assert spoofed and spoofed[0].direction == Direction.EGRESS


def test_neighbour_discovery_passes_under_policy(
    datapath: Datapath, dual: tuple[Pod, Pod, Pod], events: EventLog
) -> None:
    a, b, _c = dual
    assert b.ipv6 is not None
    datapath.apply(
        state(
            [endpoint(a, 1, enforce_egress=True), endpoint(b, 2)],
            dual,
            [rule(1, identity_of(b), Protocol.TCP, 80, direction=Direction.EGRESS)],
        )
    )
    a.run("ip", "-6", "neigh", "flush", "dev", "eth0")
    assert a.probe("tcp", b.ipv6, 80)["ok"]
    # The pod resolved its gateway's link-layer address under a policy that allows nothing but TCP/80.
    neighbours = a.run("ip", "-6", "neigh", "show", "dev", "eth0").stdout
    assert "lladdr" in neighbours, neighbours
    assert not a.probe("udp", b.ipv6, 53, timeout=0.5)["ok"]


def test_link_local_traffic_is_the_nodes_and_judged_as_the_host(
    datapath: Datapath, topo: Topology, dual: tuple[Pod, Pod, Pod], events: EventLog
) -> None:
    a, b, _c = dual
    gateway = f"{GATEWAY6}%eth0"  # on the node's side of the pod's veth; the pod pings from its link-local
    datapath.apply(
        state(
            [endpoint(a, 1, enforce_egress=True), endpoint(b, 2)],
            dual,
            [rule(1, identity_of(b), Protocol.TCP, 80, direction=Direction.EGRESS)],
        )
    )
    assert not _eventually(lambda: a.run("ping", "-6", "-c", "1", "-W", "1", gateway).returncode == 0)
    denied = events.wait_for(lambda e: e.drop_reason == DropReason.POLICY_DEFAULT_DENY and e.endpoint_id == 1)
    assert denied and denied[0].dst_identity == IDENTITY_HOST
    datapath.apply(
        state(
            [endpoint(a, 1, enforce_egress=True), endpoint(b, 2)],
            dual,
            [
                rule(1, identity_of(b), Protocol.TCP, 80, direction=Direction.EGRESS),
                rule(1, IDENTITY_HOST, Protocol.ANY, direction=Direction.EGRESS),
            ],
        )
    )
    assert _eventually(lambda: a.run("ping", "-6", "-c", "1", "-W", "1", gateway).returncode == 0)


def _eventually(check: Callable[[], bool], *, attempts: int = 4) -> bool:
    for _ in range(attempts):
        if check():
            return True
        time.sleep(0.5)
    return False


def test_a_pods_ipv6_traffic_is_judged_by_its_marked_identity_and_shown_unmarked(
    datapath: Datapath, dual: tuple[Pod, Pod, Pod], events: EventLog
) -> None:
    """The ipcache as the compiler writes it: a's IPv6 address carries a's identity marked, so an entry
    for a's identity (an IPv4 ipBlock's) admits a's IPv4 traffic only. Events and conntrack entries show
    a's identity unmarked."""
    a, b, c = dual
    assert a.ipv6 is not None and b.ipv6 is not None
    plain = state([], dual)
    marked = IPCacheEntry(IPv6Network(f"{a.ipv6}/128"), family6_identity(identity_of(a)))
    ipcache = {e for e in plain.ipcache if e.cidr != marked.cidr} | {marked}
    endpoints = frozenset({endpoint(a, 1), endpoint(b, 2, enforce_ingress=True), endpoint(c, 3)})
    v4_rule = rule(2, identity_of(a), Protocol.TCP, 80)
    datapath.apply(KernelState(endpoints=endpoints, ipcache=frozenset(ipcache), policy=frozenset({v4_rule})))
    assert a.probe("tcp", b.ip, 80)["ok"], "a's IPv4 traffic is admitted"
    assert not a.probe("tcp", b.ipv6, 80, timeout=0.5)["ok"], "a's IPv6 traffic is not"
    denied = events.wait_for(
        lambda e: e.type == EventType.DROP and e.endpoint_id == 2 and e.saddr == a.ipv6 and e.dport == 80
    )
    assert denied and denied[0].src_identity == identity_of(a)

    v6_rule = rule(2, family6_identity(identity_of(a)), Protocol.TCP, 80)
    datapath.apply(
        KernelState(endpoints=endpoints, ipcache=frozenset(ipcache), policy=frozenset({v4_rule, v6_rule}))
    )
    events.clear()
    assert a.probe("tcp", b.ipv6, 80)["ok"], "the marked identity's entry admits a's IPv6 traffic"
    allowed = events.wait_for(
        lambda e: (
            e.type == EventType.POLICY_VERDICT and e.saddr == a.ipv6 and e.direction == Direction.INGRESS
        )
    )
    assert allowed and allowed[0].verdict == Verdict.ALLOWED and allowed[0].src_identity == identity_of(a)
    tracked = [c6 for c6 in datapath.connections() if c6.saddr == a.ipv6 and c6.ifindex == b.ifindex]
    assert tracked and {(t.src_identity, t.dst_identity) for t in tracked} == {
        (identity_of(a), identity_of(b))
    }
