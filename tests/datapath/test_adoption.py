"""Adoption after churn: a starting datapath adopts a pinned endpoint only if its interface is still the one
we attached to. Endpoints whose interface is gone, or whose number now belongs to a new interface, are
removed from every map and reported; none of them stops the load."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.datapath import tc
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.maps import conntrack
from meshagent.datapath.uninstall import uninstall
from meshagent.model.kernel_state import Action, Direction, KernelState, PolicyEntry, Protocol
from meshagent.testing.topology import Topology

from tests.datapath.helpers import endpoint, identity_of, state

pytestmark = pytest.mark.kernel


@pytest.fixture
def own_pin_dir() -> Iterator[Path]:
    path = Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}"
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def test_gone_and_reused_interfaces_are_not_adopted(topo: Topology, own_pin_dir: Path) -> None:
    server = topo.add_pod("server", "10.244.6.30")
    server.serve(tcp=(80,))
    gone = topo.add_pod("gone", "10.244.6.10")  # allowed to the server: leaves connections behind
    isolated = topo.add_pod("isolated", "10.244.6.20")  # denied everything on egress
    allow_gone = PolicyEntry(10, Direction.EGRESS, identity_of(server), Protocol.TCP, 80, 80, Action.ALLOW, 7)
    first = Datapath(pin_dir=own_pin_dir, netns=topo.node)
    first.load()
    result = first.apply(
        state(
            [
                endpoint(gone, 10, enforce_egress=True),
                endpoint(isolated, 20, enforce_egress=True),
                endpoint(server, 30),
            ],
            [gone, isolated, server],
            [allow_gone],
        )
    )
    assert result.ok and result.attached == 3
    assert gone.probe("tcp", server.ip, 80)["ok"]
    assert not isolated.probe("tcp", server.ip, 80, timeout=0.5)["ok"]
    assert any(c.ifindex == gone.ifindex for c in first.connections())
    first.close()  # the agent goes away; the kernel keeps enforcing

    # While no agent runs: one pod is deleted, another is deleted and a new pod's interface takes its number.
    reused_ifindex = isolated.ifindex
    topo.remove_pod("gone")
    topo.remove_pod("isolated")
    newcomer = topo.add_pod("newcomer", "10.244.6.40", ifindex=reused_ifindex)
    assert newcomer.ifindex == reused_ifindex

    second = Datapath(pin_dir=own_pin_dir, netns=topo.node)
    second.load()  # must not fail on either
    try:
        reasons = {s.endpoint_id: s.reason for s in second.stale_at_start}
        assert set(reasons) == {10, 20}
        assert "gone" in reasons[10]
        assert "does not carry our programs" in reasons[20]
        endpoints, _, trie = second.state()
        assert set(endpoints) == {server.ifindex}, "only the endpoint whose interface is ours is adopted"
        assert not any(key.endpoint_id in (10, 20) for key in trie), "their policy entries are removed"
        assert not any(c.ifindex in (gone.ifindex, reused_ifindex) for c in second.connections())
        assert tc.attached(ifindex=reused_ifindex, netns=topo.node) == [], "nothing attached to the newcomer"
        # The old pod's deny-all is not the newcomer's: its traffic is not judged as the old endpoint's.
        assert newcomer.probe("tcp", server.ip, 80)["ok"]

        # The number is an ordinary new endpoint once the desired state says so.
        second.apply(
            state([endpoint(newcomer, 40, enforce_egress=True), endpoint(server, 30)], [newcomer, server])
        )
        assert not newcomer.probe("tcp", server.ip, 80, timeout=0.5)["ok"]
    finally:
        second.apply(KernelState())
        second.uninstall()


def test_removed_endpoint_connections_are_forgotten(datapath: Datapath, topo: Topology) -> None:
    """A removed endpoint's connections go with it, so a new interface with its number starts clean;
    connections made after the removal are kept."""
    server = topo.add_pod("server", "10.244.6.130")
    server.serve(tcp=(80,))
    client = topo.add_pod("client", "10.244.6.110")
    pods = [client, server]
    datapath.apply(state([endpoint(client, 110), endpoint(server, 130)], pods))
    assert client.probe("tcp", server.ip, 80)["ok"]
    assert any(c.ifindex == client.ifindex for c in datapath.connections())
    datapath.apply(state([endpoint(server, 130)], pods))
    datapath.expire_conntrack(timeouts=conntrack.Timeouts())
    assert not any(c.ifindex == client.ifindex for c in datapath.connections())
    assert any(c.ifindex == server.ifindex for c in datapath.connections()), "others' entries stay"


def test_node_namespace_gone_then_recreated(own_pin_dir: Path) -> None:
    prefix = f"marc{uuid.uuid4().hex[:5]}"
    topo = Topology(prefix=prefix)
    topo.create()
    try:
        client, server = topo.add_pod("client", "10.244.7.10"), topo.add_pod("server", "10.244.7.20")
        desired = state([endpoint(client, 1), endpoint(server, 2, enforce_ingress=True)], [client, server])
        first = Datapath(pin_dir=own_pin_dir, netns=topo.node)
        first.load()
        first.apply(desired)
        server.serve(tcp=(80,))
        assert not client.probe("tcp", server.ip, 80, timeout=0.5)["ok"]
        first.close()

        topo.close()  # the whole node namespace, with every pod
        missing = Datapath(pin_dir=own_pin_dir, netns=topo.node)
        missing.load()
        assert {s.endpoint_id for s in missing.stale_at_start} == {1, 2}
        assert all("namespace" in s.reason for s in missing.stale_at_start)
        missing.close()

        topo.create()  # the same names again, as a node that came back
        client, server = topo.add_pod("client", "10.244.7.10"), topo.add_pod("server", "10.244.7.20")
        server.serve(tcp=(80,))
        assert client.probe("tcp", server.ip, 80)["ok"], "nothing stale enforces on the new interfaces"
        again = Datapath(pin_dir=own_pin_dir, netns=topo.node)
        again.load()
        try:
            desired = state(
                [endpoint(client, 1), endpoint(server, 2, enforce_ingress=True)], [client, server]
            )
            assert again.apply(desired).attached == 2
            assert not client.probe("tcp", server.ip, 80, timeout=0.5)["ok"]
        finally:
            again.apply(KernelState())
            again.close()
    finally:
        topo.close()


def test_uninstall_removes_what_exists_and_is_idempotent(topo: Topology, own_pin_dir: Path) -> None:
    kept = topo.add_pod("kept", "10.244.6.210")
    deleted = topo.add_pod("deleted", "10.244.6.220")
    agent = Datapath(pin_dir=own_pin_dir, netns=topo.node)
    agent.load()
    agent.apply(state([endpoint(kept, 1, enforce_ingress=True), endpoint(deleted, 2)], [kept, deleted]))
    agent.close()
    deleted_ifindex = deleted.ifindex
    topo.remove_pod("deleted")

    report = uninstall(
        pin_dir=own_pin_dir, netns=topo.node, socket_lb_pin_dir=own_pin_dir / "lb", socket_lb_cgroup=None
    )
    assert report.complete
    assert report.detached == [f"{kept.host_ifname} (ifindex {kept.ifindex})"]
    assert any(f"ifindex {deleted_ifindex}" in line and "gone" in line for line in report.already_gone)
    assert tc.attached(ifindex=kept.ifindex, netns=topo.node) == []
    assert not own_pin_dir.exists()

    again = uninstall(
        pin_dir=own_pin_dir, netns=topo.node, socket_lb_pin_dir=own_pin_dir / "lb", socket_lb_cgroup=None
    )
    assert again.complete and again.found_nothing
    gone_netns = uninstall(
        pin_dir=own_pin_dir,
        netns="ma-no-such-netns",
        socket_lb_pin_dir=own_pin_dir / "lb",
        socket_lb_cgroup=None,
    )
    assert gone_netns.complete and gone_netns.found_nothing
