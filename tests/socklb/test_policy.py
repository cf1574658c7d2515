"""Policy still applies to translated connections: the tc datapath on the backend's interface sees the
real backend address and port (never the Service), so a policy on the backend decides."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.socklb import SocketLB
from meshagent.model.events import EventType
from meshagent.model.kernel_state import Action, Direction, KernelState, PolicyEntry, Protocol, Verdict
from meshagent.model.services import Frontend, LBBackend, LBEntry
from meshagent.testing.topology import Topology

from tests.datapath.helpers import EventLog, endpoint, identity_of, state
from tests.socklb.helpers import accepted, run_client

pytestmark = pytest.mark.kernel

VIP = IPv4Address("10.96.0.30")


@pytest.fixture
def policy_datapath(lb_node: Topology) -> Iterator[Datapath]:
    datapath = Datapath(
        pin_dir=Path("/sys/fs/bpf") / f"meshagent-lbpol-{uuid.uuid4().hex[:8]}", netns=lb_node.node
    )
    datapath.load()
    try:
        yield datapath
    finally:
        datapath.apply(KernelState())
        datapath.uninstall()


def test_policy_on_the_backend_decides_for_connections_through_the_vip(
    lb_topo: Topology, socklb: SocketLB, policy_datapath: Datapath, lb_cgroup: Path, tmp_path: Path
) -> None:
    allowed = lb_topo.add_pod("allowed", "10.244.4.10")
    other = lb_topo.add_pod("other", "10.244.4.11")
    backend = lb_topo.add_pod("backend", "10.244.4.20")
    backend.serve(tcp=(8080,), log=tmp_path / "backend.log")
    pods = [allowed, other, backend]
    # The backend admits `allowed` on its real port 8080 and nothing else (the Service port 80 is not
    # what the datapath sees).
    rule = PolicyEntry(
        endpoint_id=3,
        direction=Direction.INGRESS,
        peer_identity=identity_of(allowed),
        protocol=Protocol.TCP,
        port_lo=8080,
        port_hi=8080,
        action=Action.ALLOW,
        rule_id=77,
    )
    endpoints = [endpoint(allowed, 1), endpoint(other, 2), endpoint(backend, 3, enforce_ingress=True)]
    assert policy_datapath.apply(state(endpoints, pods, [rule])).ok
    frontend = Frontend(VIP, 80, Protocol.TCP)
    socklb.apply({frontend: LBEntry(frontend, (LBBackend(backend.ip, 8080, 1),))})
    events = EventLog()
    policy_datapath.start_events(events)
    try:
        admitted = run_client(allowed, "tcp", str(VIP), "80", cgroup=lb_cgroup)
        refused = run_client(other, "tcp", str(VIP), "80", "--timeout", "0.5", cgroup=lb_cgroup)
        verdicts = events.wait_for(
            lambda e: e.type == EventType.POLICY_VERDICT and e.verdict == Verdict.ALLOWED and e.rule_id == 77
        )
        drops = events.wait_for(lambda e: e.type == EventType.DROP and e.saddr == other.ip)
    finally:
        policy_datapath.stop_events()

    assert admitted["ok"] == 1 and admitted["peers"] == [f"{VIP}:80"]
    assert refused["ok"] == 0 and refused["errors"] == {"TimeoutError": 1}, refused
    assert accepted(tmp_path / "backend.log", allowed) == 1
    assert accepted(tmp_path / "backend.log", other) == 0
    # The datapath judged the real backend, not the Service address.
    assert verdicts and (verdicts[0].daddr, verdicts[0].dport) == (backend.ip, 8080)
    assert drops and (drops[0].daddr, drops[0].dport) == (backend.ip, 8080)
