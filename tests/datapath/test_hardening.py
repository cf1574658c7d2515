"""A noisy or hostile pod cannot hurt its neighbours, and a failed map write never opens a hole: each case
runs its own datapath with small capacities (datapath.loader.Capacities), with real packets."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from bcc import BPF
from meshagent.agent.datapath_metrics import DatapathCollector
from meshagent.datapath import tc
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.loader import Capacities
from meshagent.datapath.maps import conntrack
from meshagent.datapath.maps.base import TypedMap
from meshagent.datapath.maps.ipcache import MAP_NAME as ipcache_map_name
from meshagent.datapath.migration import LayoutMigration, prefix_value_type
from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import (
    Action,
    Direction,
    IPCacheEntry,
    KernelState,
    PolicyEntry,
    Protocol,
)
from meshagent.testing.topology import Pod, Topology
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.datapath.crafted import Counters
from tests.datapath.helpers import endpoint, identity_of, state
from tests.datapath.test_apply import Diff
from tests.datapath.test_crafted import _HELD_TCP, Held

pytestmark = pytest.mark.kernel

DENIED_TIMEOUT = 0.5
# Distinct UDP tuples the spray sends; fewer only where everything is slow (the kernel matrix under TCG).
SPRAY_TUPLES = int(os.environ.get("MESHAGENT_SPRAY_TUPLES", "300000"))
SUBNET_IDENTITY = 70_000  # a prefix's identity, apart from the pods' own (helpers.identity_of)


@pytest.fixture
def own_pin_dir() -> Iterator[Path]:
    path = Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}"
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def make_datapath(topo: Topology, own_pin_dir: Path) -> Iterator[object]:
    made: list[Datapath] = []

    def make(capacities: Capacities) -> Datapath:
        dp = Datapath(pin_dir=own_pin_dir, netns=topo.node, capacities=capacities)
        dp.load()
        made.append(dp)
        return dp

    yield make
    for dp in made:
        dp.apply(KernelState())
        dp.uninstall()


def allow_in(endpoint_id: int, peer: Pod, port: int, protocol: Protocol = Protocol.TCP) -> PolicyEntry:
    return PolicyEntry(
        endpoint_id, Direction.INGRESS, identity_of(peer), protocol, port, port, Action.ALLOW, 3
    )


_SPRAY = """
import socket, sys
dst, count = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(10):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.setblocking(False)
    socks.append(s)
sent = 0
for i in range(count // len(socks)):
    for s in socks:
        try:
            s.sendto(b"", (dst, 1024 + i % 60000))
            sent += 1
        except BlockingIOError:
            pass
print(sent, flush=True)
"""


def test_udp_spray_cannot_evict_another_pods_idle_connection(
    make_datapath: object, topo: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    # The LRU table holds a twentieth of the spray's entries (two per tuple: at s and at t).
    dp = make_datapath(Capacities(conntrack=max(1024, SPRAY_TUPLES // 18), conntrack_tcp=4096))  # type: ignore[operator]
    a = topo.add_pod("a", "10.244.8.10")
    b = topo.add_pod("b", "10.244.8.20")
    s = topo.add_pod("s", "10.244.8.30")
    t = topo.add_pod("t", "10.244.8.40")
    b.serve(tcp=(80,))
    # a and b isolated for ingress: the idle connection's packets each way pass only through conntrack.
    dp.apply(
        state(
            [
                endpoint(a, 1, enforce_ingress=True),
                endpoint(b, 2, enforce_ingress=True),
                endpoint(s, 3),
                endpoint(t, 4),
            ],
            [a, b, s, t],
            [allow_in(2, a, 80)],
        )
    )
    held = Held(a, _HELD_TCP, b.ip, 80)
    try:
        assert held.exchange() == "ok"
        # 300k UDP tuples from s to t: every one a new connection at s and at t, 600k entries for an LRU
        # table of 16k.
        out = s.run(sys.executable, "-c", _SPRAY, str(t.ip), str(SPRAY_TUPLES), timeout=600)
        assert int(out.stdout.strip() or 0) >= SPRAY_TUPLES, out.stderr
        entries, capacity = dp.map_pressure()[conntrack.MAP_NAME]
        assert entries >= 0.9 * capacity, "the spray filled the LRU table (it evicted)"
        assert any("ma_ct is" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert held.exchange() == "ok", "the idle connection survived"
        kept = [k for k, _ in dp.ct_tcp_map.items() if held.port in (k.sport, k.dport)]
        assert {k.ifindex for k in kept} == {a.ifindex, b.ifindex}
        dp.expire_conntrack()
        assert dp.last_ct_scan.entries >= entries and dp.last_ct_scan.seconds > 0
    finally:
        held.close()


_FLOOD = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(b"", (sys.argv[1], 1024 + i % 60000))
"""


def test_event_flood_from_one_pod_leaves_room_for_another_pods_flow(
    make_datapath: object, topo: Topology
) -> None:
    # A 64 KiB ring buffer (about 700 events) and 100 events a second per budget: without budgets the
    # flood's 40k events would fill the buffer many times over before it is read.
    dp = make_datapath(Capacities(event_pages=16, event_rate=100, event_burst=50))  # type: ignore[operator]
    f = topo.add_pod("f", "10.244.8.11")
    v = topo.add_pod("v", "10.244.8.21")
    b = topo.add_pod("b", "10.244.8.31")
    b.serve(tcp=(80,))
    dp.apply(
        state(
            [endpoint(f, 1), endpoint(v, 2), endpoint(b, 3, enforce_ingress=True)],
            [f, v, b],
            [allow_in(3, v, 80)],
        )
    )
    f.run(sys.executable, "-c", _FLOOD, str(b.ip), "20000", timeout=60)
    assert v.probe("tcp", b.ip, 80)["ok"]
    received: list[DatapathEvent] = []
    reader = dp.start_events(on_events=received.extend, thread=False)
    try:
        reader.drain()
    finally:
        dp.stop_events()
    from_v = [e for e in received if e.saddr == v.ip and e.type == EventType.POLICY_VERDICT]
    assert {e.endpoint_id for e in from_v} == {2, 3}, "v's flow is seen leaving v and entering b"
    suppressed = dp.suppressed_events()
    assert suppressed.get(f.ifindex, 0) > 10_000 and suppressed.get(b.ifindex, 0) > 10_000, suppressed
    ring_lost = sum(value.count for value in dp.lost_map.read(0))
    assert ring_lost == 0, "the budget kept the ring buffer from overflowing"
    assert dp.lost_events() == sum(suppressed.values()), "suppressed events are reported as lost"
    # And exported per interface, as Prometheus reads them.
    registry = CollectorRegistry()
    registry.register(DatapathCollector(dp))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    exported = {s.labels["ifindex"]: s.value for s in families["meshagent_events_suppressed"].samples}
    assert exported[str(f.ifindex)] == suppressed[f.ifindex]
    assert families["meshagent_endpoints_fail_closed"].samples[0].value == 0


def test_a_deny_that_does_not_fit_isolates_its_endpoint_until_written(
    make_datapath: object, topo: Topology
) -> None:
    dp = make_datapath(Capacities(policy=4))  # type: ignore[operator]
    a = topo.add_pod("a", "10.244.8.12")
    b = topo.add_pod("b", "10.244.8.22")
    a.serve(tcp=(80, 81, 82))
    # a allows everything from b; b's filler rules take the rest of the map but one entry.
    allow_all_from_b = PolicyEntry(1, Direction.INGRESS, identity_of(b), Protocol.ANY, 0, 0, Action.ALLOW, 3)
    filler = [allow_in(2, a, port) for port in (1, 2)]
    first = dp.apply(
        state(
            [endpoint(a, 1, enforce_ingress=True), endpoint(b, 2, enforce_ingress=True)],
            [a, b],
            [allow_all_from_b, *filler],
        )
    )
    assert first.ok and not dp.fail_closed
    assert b.probe("tcp", a.ip, 82)["ok"], "allowed by the allow-all"
    held = Held(b, _HELD_TCP, a.ip, 80)
    try:
        # Two denies from b to a (not part of this update's endpoints): one fits, the other does not. The
        # allow-all, which is in the map, covers the missing one: only isolation keeps it denied.
        denies = frozenset(
            PolicyEntry(1, Direction.INGRESS, identity_of(b), Protocol.TCP, port, port, Action.DENY, 5)
            for port in (81, 82)
        )
        result = dp.apply_diff(Diff(upsert_policy=denies))
        assert not result.ok and result.fail_closed_endpoints == [1]
        assert "isolated" in dp.fail_closed[a.ifindex]
        counters = Counters(dp)
        for port in (80, 81, 82):
            assert not b.probe("tcp", a.ip, port, timeout=DENIED_TIMEOUT)["ok"], f"a is isolated ({port})"
        assert counters.wait_for(DropReason.ISOLATED, Direction.INGRESS, at_least=3) >= 3
        assert held.exchange() == "ok", "an established connection carries on"
        # Room is made: the deny is written, a is itself again (80 allowed, 81 and 82 denied).
        result = dp.apply_diff(Diff(delete_policy=frozenset(filler)))
        assert result.ok and not dp.fail_closed
        assert b.probe("tcp", a.ip, 80)["ok"]
        for port in (81, 82):
            assert not b.probe("tcp", a.ip, port, timeout=DENIED_TIMEOUT)["ok"], port
    finally:
        held.close()


def test_an_identity_that_does_not_fit_isolates_the_endpoints_that_judge_peers(
    make_datapath: object, topo: Topology
) -> None:
    dp = make_datapath(Capacities(ipcache=2))  # type: ignore[operator]
    a = topo.add_pod("a", "10.244.8.15")
    b = topo.add_pod("b", "10.244.8.25")
    c = topo.add_pod("c", "10.244.8.35")
    a.serve(tcp=(80,))
    c.serve(tcp=(80,))
    # a allows the subnet's identity, which b's own /32 entry keeps b out of; c has no entry of its own.
    # Written in address order, b's entry is the one that does not fit: without it b would pass for the
    # subnet, which a allows.
    subnet = IPCacheEntry(IPv4Network("10.244.8.0/24"), SUBNET_IDENTITY)
    endpoints = [endpoint(a, 1, enforce_ingress=True), endpoint(b, 2), endpoint(c, 3)]
    allow_subnet = PolicyEntry(1, Direction.INGRESS, SUBNET_IDENTITY, Protocol.TCP, 80, 80, Action.ALLOW, 3)

    def desired(*pods: Pod) -> KernelState:
        full = state(endpoints, pods, [allow_subnet])
        return replace(full, ipcache=full.ipcache | {subnet})

    counters = Counters(dp)
    result = dp.apply(desired(a, b))
    assert not result.ok and ipcache_map_name in " ".join(result.errors)
    assert set(dp.fail_closed) == {a.ifindex}, "only a judges its peers (b and c enforce nothing)"
    assert result.fail_closed_endpoints == [1] and ipcache_map_name in dp.fail_closed[a.ifindex]
    assert not b.probe("tcp", a.ip, 80, timeout=DENIED_TIMEOUT)["ok"], "b cannot pass for the subnet"
    assert not c.probe("tcp", a.ip, 80, timeout=DENIED_TIMEOUT)["ok"], "a is isolated"
    assert counters.wait_for(DropReason.ISOLATED, Direction.INGRESS, at_least=2) >= 2
    assert b.probe("tcp", c.ip, 80)["ok"], "c, not under policy, is untouched"
    # a's own entry is no longer wanted: that makes room, b's entry is written and a is itself again.
    result = dp.apply(desired(b))
    assert result.ok and not dp.fail_closed, (result, dp.fail_closed)
    assert not b.probe("tcp", a.ip, 80, timeout=DENIED_TIMEOUT)["ok"], "b is b: not allowed"
    assert c.probe("tcp", a.ip, 80)["ok"], "c is in the subnet: allowed"


def test_an_endpoint_whose_entry_cannot_be_written_passes_nothing(
    make_datapath: object, topo: Topology
) -> None:
    dp = make_datapath(Capacities(endpoints=2))  # type: ignore[operator]
    a = topo.add_pod("a", "10.244.8.13")
    b = topo.add_pod("b", "10.244.8.23")
    c = topo.add_pod("c", "10.244.8.33")
    c.serve(tcp=(80,))
    counters = Counters(dp)
    ids = {a.ifindex: 1, b.ifindex: 2, c.ifindex: 3}
    result = dp.apply(state([endpoint(p, ids[p.ifindex]) for p in (a, b, c)], [a, b, c]))
    full = [ifindex for ifindex in (a.ifindex, b.ifindex, c.ifindex) if ifindex in dp.fail_closed]
    assert len(full) == 1 and not result.ok
    victim = {a.ifindex: a, b.ifindex: b, c.ifindex: c}[full[0]]
    assert len(tc.attached(ifindex=victim.ifindex, netns=topo.node)) == 2, "programs attached all the same"
    other = a if victim is not a else b
    assert not other.ping(victim.ip), "nothing but ARP passes the entry-less endpoint"
    assert counters.wait_for(DropReason.NO_ENDPOINT, Direction.INGRESS) >= 1
    # Another endpoint goes away: the next apply writes the entry and traffic flows.
    survivors = [p for p in (a, b, c) if p is victim or p is other]
    result = dp.apply(state([endpoint(p, ids[p.ifindex]) for p in survivors], survivors))
    assert result.ok and not dp.fail_closed, (result, dp.fail_closed)
    assert other.ping(victim.ip)


def test_a_full_tcp_table_overflows_into_the_lru_one(make_datapath: object, topo: Topology) -> None:
    dp = make_datapath(Capacities(conntrack_tcp=2, conntrack=256))  # type: ignore[operator]
    a = topo.add_pod("a", "10.244.8.14")
    b = topo.add_pod("b", "10.244.8.24")
    b.serve(tcp=(80,))
    dp.apply(state([endpoint(a, 1), endpoint(b, 2, enforce_ingress=True)], [a, b], [allow_in(2, a, 80)]))
    for _ in range(3):
        assert a.probe("tcp", b.ip, 80)["ok"]
    assert len(dp.ct_tcp_map) == 2 and dp.ct_tcp_overflow() >= 2
    tcp_in_lru = [k for k, _ in dp.ct_map.items() if k.proto == 6]
    assert tcp_in_lru, "the connections that did not fit were tracked in the LRU table"


_OLD_CT = """
struct key { u32 ifindex; u32 saddr; u32 daddr; u16 sport; u16 dport; u8 proto; u8 pad[3]; };
struct value { u64 counters[6]; u32 rule_id; u32 src_identity; u32 dst_identity; u8 bytes[4]; };
BPF_TABLE_PINNED("lru_hash", struct key, struct value, ma_ct, 64, PIN);
"""


def test_migration_carries_entries_of_the_shorter_older_layout(
    make_datapath: object, own_pin_dir: Path
) -> None:
    """Before sequence tracking, struct ma_ct_value ended at tcp_flags (64 bytes) and every connection
    lived in one table: such entries are carried over zero-filled, TCP into ma_ct_tcp."""
    old_dir = own_pin_dir / "layout-000000000000"
    old_dir.mkdir(parents=True)
    old = BPF(text=_OLD_CT, cflags=[f'-DPIN="{old_dir}/ma_ct"'])
    old_type = prefix_value_type(64)
    assert old_type is not None
    old_map = TypedMap(
        name="old", fd=old["ma_ct"].map_fd, key_type=conntrack.CTKey, value_type=old_type, capacity=64
    )
    for proto, sport in ((6, 40000), (17, 40001)):
        value = old_type()
        value.packets_fwd, value.packets_rev, value.rule_id, value.flags, value.verdict = 5, 4, 9, 0x01, 1
        old_map.update(conntrack.CTKey(7, 0x0A0A0A0A, 0x0B0B0B0B, sport, 80, proto), value)
    old.cleanup()

    dp = make_datapath(Capacities())  # type: ignore[operator]
    carried = LayoutMigration([old_dir], netns=None).carry_connections(tcp=dp.ct_tcp_map, other=dp.ct_map)
    assert carried == 2
    tcp = {k.sport: v for k, v in dp.ct_tcp_map.items()}
    other = {k.sport: v for k, v in dp.ct_map.items()}
    assert set(tcp) == {40000} and set(other) == {40001}
    for value in (tcp[40000], other[40001]):
        assert (value.packets_fwd, value.packets_rev, value.rule_id, value.flags, value.verdict) == (
            5,
            4,
            9,
            1,
            1,
        )
        assert value.next_seq_fwd == value.next_seq_rev == 0, "unknown: learnt from the next segments"
