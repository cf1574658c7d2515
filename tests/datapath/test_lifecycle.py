"""Attachment, pinning and adoption: the kernel keeps enforcing without the agent, and a new agent
adopts what it finds instead of starting over."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from mmap import PAGESIZE
from pathlib import Path

import pytest
from meshagent.datapath import tc
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.layout import layout_id
from meshagent.datapath.loader import Capacities
from meshagent.datapath.maps.policy import compile_entries
from meshagent.model.kernel_state import IDENTITY_ANY, Action, Direction, KernelState, PolicyEntry, Protocol
from meshagent.testing.topology import Topology

from tests.datapath.helpers import endpoint, identity_of, state

pytestmark = pytest.mark.kernel


@pytest.fixture
def own_pin_dir() -> Iterator[Path]:
    path = Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}"
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def _qdiscs(topo: Topology, ifname: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", topo.node, "tc", "qdisc", "show", "dev", ifname],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_reattach_replaces_and_detach_removes_exactly_ours(datapath: Datapath, topo: Topology) -> None:
    a = topo.add_pod("a", "10.244.3.10")
    for _ in range(3):
        datapath.attach(a.ifindex)
    filters = tc.attached(ifindex=a.ifindex, netns=topo.node)
    assert sorted((f.parent, f.name) for f in filters) == [
        (tc.PARENT_INGRESS, "ma_from_endpoint"),
        (tc.PARENT_EGRESS, "ma_to_endpoint"),
    ]
    assert "clsact" in _qdiscs(topo, a.host_ifname)
    datapath.detach(a.ifindex)
    assert tc.attached(ifindex=a.ifindex, netns=topo.node) == []
    assert "clsact" not in _qdiscs(topo, a.host_ifname)


def test_kernel_enforces_without_agent_and_new_agent_adopts(topo: Topology, own_pin_dir: Path) -> None:
    a = topo.add_pod("a", "10.244.3.20")
    b = topo.add_pod("b", "10.244.3.30")
    b.serve(tcp=(80, 81))
    desired = state(
        [endpoint(a, 1), endpoint(b, 2, enforce_ingress=True)],
        [a, b],
        [
            PolicyEntry(2, Direction.INGRESS, identity_of(a), Protocol.TCP, 80, 80, Action.ALLOW, 1),
            PolicyEntry(2, Direction.INGRESS, IDENTITY_ANY, Protocol.ICMP, 0, 0, Action.ALLOW, 2),
        ],
    )
    first = Datapath(pin_dir=own_pin_dir, netns=topo.node)
    first.load()
    first.apply(desired)
    assert sorted(p.name for p in first.maps_dir.iterdir()) == sorted(
        [
            "ma_ct",
            "ma_ct6",
            "ma_ct6_tcp",
            "ma_ct_tcp",
            "ma_ct_tcp_overflow",
            "ma_endpoints",
            "ma_endpoints6",
            "ma_event_budget",
            "ma_events_lost",
            "ma_frags",
            "ma_frags6",
            "ma_ipcache",
            "ma_ipcache6",
            "ma_ipv6_progs",
            "ma_metrics",
            "ma_policy",
            "ma_wg_config",
            "ma_wg_remote",
            "ma_wg_remote6",
            "ma_wg_stats",
        ]
    )
    first.close()  # the agent goes away; programs stay attached, maps stay pinned

    try:
        assert a.probe("tcp", b.ip, 80)["ok"]
        assert not a.probe("tcp", b.ip, 81, timeout=0.5)["ok"], "still enforcing while no agent runs"

        second = Datapath(pin_dir=own_pin_dir, netns=topo.node)
        second.load()
        found_endpoints, found_ipcache, found_policy = second.state()
        assert set(found_endpoints.values()) == set(desired.endpoints)
        assert found_ipcache == set(desired.ipcache)
        assert found_policy == compile_entries(desired.policy)
        # Applying the same desired state changes nothing: adoption, not a flush and rewrite.
        result = second.apply(desired)
        assert (result.written, result.deleted, result.attached) == (0, 0, 0)
        assert a.probe("tcp", b.ip, 80)["ok"]
        assert not a.probe("tcp", b.ip, 81, timeout=0.5)["ok"]
        assert len(tc.attached(ifindex=b.ifindex, netns=topo.node)) == 2, "re-attached in place, not stacked"
        second.apply(KernelState())
        second.uninstall()
        assert not own_pin_dir.exists()
        assert tc.attached(ifindex=b.ifindex, netns=topo.node) == []
    finally:
        for ifindex in (a.ifindex, b.ifindex):
            tc.detach(ifindex=ifindex, netns=topo.node)


def test_new_map_layout_migrates_without_a_gap(topo: Topology, own_pin_dir: Path) -> None:
    """An agent whose maps differ (here: another conntrack size, which needs new maps just as a changed
    struct does) takes over from the old programs: enforcement never lapses, established connections
    of both families survive, and the old maps are removed."""
    a = topo.add_pod("a", "10.244.3.40", ipv6="fd00:3::40")
    b = topo.add_pod("b", "10.244.3.50", ipv6="fd00:3::50")
    b.serve(tcp=(80, 81))
    desired = state(
        [endpoint(a, 1, enforce_ingress=True), endpoint(b, 2, enforce_ingress=True)],
        [a, b],
        [PolicyEntry(2, Direction.INGRESS, identity_of(a), Protocol.TCP, 80, 80, Action.ALLOW, 1)],
    )
    old = Datapath(pin_dir=own_pin_dir, netns=topo.node, capacities=Capacities(conntrack=4096))
    old.load()
    old.apply(desired)
    old.close()
    # a is isolated for ingress: the replies of its connections pass only because conntrack knows them.
    assert b.ipv6 is not None
    talks = [a.talk(b.ip, 80, seconds=6.0), a.talk(b.ipv6, 80, seconds=6.0)]
    try:
        for talk in talks:
            assert talk.stdout is not None and talk.stdout.readline().strip() == "connected"
        new = Datapath(pin_dir=own_pin_dir, netns=topo.node)
        new.load()
        assert new.maps_dir != old.maps_dir
        # Loaded but not applied yet: the old programs and maps still enforce.
        assert not a.probe("tcp", b.ip, 81, timeout=0.5)["ok"]
        result = new.apply(desired)
        assert result.ok and result.attached == 2
        assert not old.maps_dir.exists(), "the old layout's maps are removed"
        # Carried, not picked up again mid-stream: a lost entry would be re-judged and flagged so.
        talked = [c for c in new.connections() if c.dport == 80 and c.saddr in (a.ip, a.ipv6)]
        assert {c.saddr for c in talked} == {a.ip, a.ipv6}, talked
        assert not [c for c in talked if c.midstream], talked
        assert a.probe("tcp", b.ip, 80)["ok"] and not a.probe("tcp", b.ip, 81, timeout=0.5)["ok"]
        assert a.probe("tcp", b.ipv6, 80)["ok"] and not a.probe("tcp", b.ipv6, 81, timeout=0.5)["ok"]
        for talk in talks:
            out, err = talk.communicate(timeout=30)
            exchanged, failed = (int(x) for x in out.split())
            assert failed == 0 and exchanged > 10, (talk.args, out, err)
        new.apply(KernelState())
        new.uninstall()
    finally:
        for talk in talks:
            if talk.poll() is None:
                talk.kill()
        for ifindex in (a.ifindex, b.ifindex):
            tc.detach(ifindex=ifindex, netns=topo.node)


def test_event_buffer_size_is_a_setting_that_keeps_the_maps(topo: Topology, own_pin_dir: Path) -> None:
    """The ring buffer is not pinned: its size is left out of the layout id, so changing it keeps every
    pinned map; so are the settings that only change what the programs do (event budget, RST window)."""
    bigger = Capacities(event_pages=2048, event_rate=10, event_burst=5, rst_window=1000)
    assert bigger.layout_flags() == Capacities().layout_flags()
    assert Capacities(conntrack_tcp=4096).layout_flags() != Capacities().layout_flags()
    dp = Datapath(pin_dir=own_pin_dir, netns=topo.node, capacities=bigger)
    dp.load()
    try:
        assert dp.maps_dir == own_pin_dir / layout_id(Capacities().layout_flags())
        reader = dp.start_events(on_events=lambda events: None, thread=False)
        assert reader.buffer_bytes == 2048 * PAGESIZE
        reader.stop()
    finally:
        dp.uninstall()
