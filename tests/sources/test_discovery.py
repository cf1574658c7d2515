"""Local endpoint discovery against a real node netns with a routed veth to a pod netns."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from meshagent.datapath.discovery import (
    EndpointInterfaces,
    NotUpYet,
    PodInterface,
    find_pod_interface,
    wait_for_pod_interface,
)

pytestmark = pytest.mark.kernel

POD_IP = "10.213.0.5"


def sh(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", "-n", netns, *args] if netns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass
class Topology:
    node: str  # netns playing the node
    pod: str  # netns playing the pod
    host_veth: str


@pytest.fixture
def topo() -> Iterator[Topology]:
    tag = f"{os.getpid() % 100000}"
    t = Topology(node=f"ma-disc-node-{tag}", pod=f"ma-disc-pod-{tag}", host_veth=f"mad{tag}h")
    try:
        sh("netns", "add", t.node)
        sh("netns", "add", t.pod)
        sh("link", "add", t.host_veth, "type", "veth", "peer", "name", "eth0", "netns", t.pod, netns=t.node)
        sh("addr", "add", f"{POD_IP}/32", "dev", "eth0", netns=t.pod)
        yield t
    finally:
        for ns in (t.pod, t.node):  # deleting the netns removes its veth end and routes
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_not_up_yet_until_route_and_both_ends_are_up(topo: Topology) -> None:
    found = find_pod_interface(POD_IP, netns=topo.node)
    assert isinstance(found, NotUpYet) and "no /32 route" in found.reason
    sh("link", "set", topo.host_veth, "up", netns=topo.node)
    sh("route", "add", f"{POD_IP}/32", "dev", topo.host_veth, "scope", "link", netns=topo.node)
    found = find_pod_interface(POD_IP, netns=topo.node)
    assert isinstance(found, NotUpYet) and "no carrier" in found.reason  # pod end still down
    sh("link", "set", "eth0", "up", netns=topo.pod)
    found = wait_for_pod_interface(POD_IP, netns=topo.node, timeout=3, interval=0.05)
    assert isinstance(found, PodInterface) and found.ifname == topo.host_veth
    out = subprocess.run(
        ["ip", "-n", topo.node, "-o", "link", "show", topo.host_veth],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(out.split(":", 1)[0]) == found.ifindex
    # Another pod's IP on this node, or a route via a gateway, is not this pod's interface.
    assert isinstance(find_pod_interface("10.213.0.6", netns=topo.node), NotUpYet)
    sh("addr", "add", "10.213.1.1/24", "dev", topo.host_veth, netns=topo.node)
    sh("route", "add", "10.213.0.7/32", "via", "10.213.1.2", netns=topo.node)
    found = find_pod_interface("10.213.0.7", netns=topo.node)
    assert isinstance(found, NotUpYet) and "gateway" in found.reason
    sh("link", "set", topo.host_veth, "down", netns=topo.node)
    found = find_pod_interface(POD_IP, netns=topo.node)
    assert isinstance(found, NotUpYet)


def test_own_namespace_when_netns_is_none(topo: Topology) -> None:
    sh("link", "set", topo.host_veth, "up", netns=topo.node)
    sh("link", "set", "eth0", "up", netns=topo.pod)
    sh("route", "add", f"{POD_IP}/32", "dev", topo.host_veth, "scope", "link", netns=topo.node)
    # Run the lookup in a process that lives in the node netns, with netns=None.
    code = (
        "from meshagent.datapath.discovery import find_pod_interface; "
        f"print(find_pod_interface({POD_IP!r}, netns=None))"
    )
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{topo.node}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert f"PodInterface(ifname='{topo.host_veth}'" in out


def test_endpoint_interfaces_report_state_per_endpoint(topo: Topology) -> None:
    sh("link", "set", topo.host_veth, "up", netns=topo.node)
    sh("link", "set", "eth0", "up", netns=topo.pod)
    sh("route", "add", f"{POD_IP}/32", "dev", topo.host_veth, "scope", "link", netns=topo.node)
    # A second pod whose veth exists but whose end in the pod is still down.
    sh("link", "add", "mad2h", "type", "veth", "peer", "name", "eth1", "netns", topo.pod, netns=topo.node)
    sh("link", "set", "mad2h", "up", netns=topo.node)
    sh("route", "add", "10.213.0.8/32", "dev", "mad2h", "scope", "link", netns=topo.node)
    tracker = EndpointInterfaces(netns=topo.node)
    changed = tracker.refresh({"web/a": POD_IP, "web/b": "10.213.0.8", "web/c": "10.213.0.9"})
    assert isinstance(changed["web/a"], PodInterface) and changed["web/a"].ifname == topo.host_veth
    assert isinstance(changed["web/b"], NotUpYet) and "carrier" in changed["web/b"].reason
    assert isinstance(changed["web/c"], NotUpYet) and "no /32 route" in changed["web/c"].reason
    assert tracker.pending() == ["web/b", "web/c"]
    sh("link", "set", "eth1", "up", netns=topo.pod)
    changed = tracker.refresh({"web/a": POD_IP, "web/b": "10.213.0.8"})
    assert list(changed) == ["web/b"] and isinstance(changed["web/b"], PodInterface)
    assert changed["web/b"].ifname == "mad2h"
    assert tracker.pending() == [] and set(tracker.states) == {"web/a", "web/b"}
