"""One agent per node, all reading one manifest directory: policy between pods on different nodes, the
node's own address as the host, and one node's agent restarted while the other keeps serving and
enforcing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from meshagent.observer.client import ObserverClient
from meshagent.observer.proto.flow import flow_pb2
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.relay import relay_pb2 as rpb
from meshagent.testing.agents import NodeAgent, meshagent_command, start_agents
from meshagent.testing.cluster import ClusterTopology
from meshagent.testing.topology import Pod

from tests.agent.test_agent_e2e import pod_manifest
from tests.sources.k8s_emulator import KubeEmulator
from tests.waiting import seconds_until

pytestmark = pytest.mark.kernel

POLICY = textwrap.dedent("""\
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: db-from-web, namespace: shop}
    spec:
      podSelector: {matchLabels: {app: db}}
      policyTypes: [Ingress, Egress]
      ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 80}]}]
    """)


@dataclass
class Running:
    cluster: ClusterTopology
    agents: list[NodeAgent]
    pods: dict[str, Pod]


@pytest.fixture(scope="module")
def cluster_of_two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """web and other on node-1, db on node-2; db accepts only web, on port 80. One set of agents for the
    module (starting them is most of each test's time); a test that stops one starts it again."""
    tmp_path = tmp_path_factory.mktemp("two-nodes")
    with ClusterTopology(2) as cluster:
        first, second = cluster.nodes
        pods = {"web": first.add_pod("web"), "other": first.add_pod("other"), "db": second.add_pod("db")}
        pods["db"].serve(tcp=(80, 81))
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        placed = {"web": first.name, "other": first.name, "db": second.name}
        (manifests / "cluster.yaml").write_text(
            "---\n".join(
                [
                    "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
                    cluster.manifests(),
                    *(
                        pod_manifest(name, "shop", pod.ip, {"app": name}, node=placed[name], ipv6=pod.ipv6)
                        for name, pod in pods.items()
                    ),
                ]
            )
        )
        (manifests / "policy.yaml").write_text(POLICY)
        agents = [NodeAgent(node, tmp_path, manifests=manifests) for node in cluster.nodes]
        try:
            start_agents(agents)
            yield Running(cluster, agents, pods)
        finally:
            for agent in agents:
                agent.close()


@pytest.fixture
def two_nodes(cluster_of_two: Running) -> Running:
    """The module's two nodes, with both agents running (one a previous test killed is started again)."""
    for agent in cluster_of_two.agents:
        if not agent.running():
            agent.start()
    return cluster_of_two


def allowed(client: Pod, server: Pod, port: int, *, ipv6: bool = False) -> bool:
    """One TCP exchange to the server's IPv4 address (or its IPv6 one) went through."""
    address = server.ipv6 if ipv6 else server.ip
    assert address is not None, f"pod {server.name} has no IPv6 address"
    return bool(client.probe("tcp", address, port, timeout=1.0)["ok"])


def from_node(running: Running, node: int, server: Pod, port: int) -> bool:
    """A TCP exchange sent by the node itself (from its InternalIP)."""
    netns = running.cluster.nodes[node].netns
    command = [sys.executable, "-m", "meshagent.testing.netprobe", "tcp", str(server.ip), str(port)]
    result = subprocess.run(["ip", "netns", "exec", netns, *command], capture_output=True, timeout=30)
    return result.returncode == 0


def dropped_seen(agent: NodeAgent, source: str, destination: str) -> bool:
    with ObserverClient(agent.server) as client:
        return any(
            r.flow.source.pod_name == source
            and r.flow.destination.pod_name == destination
            and r.flow.verdict == flow_pb2.DROPPED
            for r in client.get_flows(opb.GetFlowsRequest(number=500))
            if r.HasField("flow")
        )


def test_policy_across_nodes_and_the_node_as_host(two_nodes: Running) -> None:
    web, other, db = (two_nodes.pods[n] for n in ("web", "other", "db"))
    assert allowed(web, db, 80)
    assert not allowed(web, db, 81), "db's ingress (enforced on node-2) admits port 80 only"
    assert not allowed(other, db, 80), "other is not web, though it shares web's node"
    # The pods are dual-stack: across the underlay's IPv6 network the same policy decides.
    assert allowed(web, db, 80, ipv6=True)
    assert not allowed(web, db, 81, ipv6=True)
    assert not allowed(other, db, 80, ipv6=True)
    # The Node objects tell each agent its own InternalIP: db's node is its host, the other node is not.
    assert from_node(two_nodes, 1, db, 81)
    assert not from_node(two_nodes, 0, db, 80)


def test_one_agent_restarts_while_the_other_serves_and_enforces(two_nodes: Running) -> None:
    web, other, db = (two_nodes.pods[n] for n in ("web", "other", "db"))
    first, second = two_nodes.agents
    second.kill()
    # The kernel of node-2 keeps enforcing without its agent; node-1's agent keeps serving flows.
    assert allowed(web, db, 80)
    assert not allowed(other, db, 80)
    with ObserverClient(first.server) as client:
        flows = list(client.get_flows(opb.GetFlowsRequest(number=50)))
        assert any(r.HasField("flow") and r.flow.destination.pod_name == "db" for r in flows)
        assert client.server_status().seen_flows > 0
    took = second.start()
    assert seconds_until(second.ready, 1.0) is not None, f"ready after {took:.1f} s"
    assert allowed(web, db, 80)
    assert not allowed(other, db, 80)
    assert not allowed(web, db, 81)
    # The restarted agent reports what its node's kernel drops again.
    assert (
        seconds_until(lambda: not allowed(other, db, 80) and dropped_seen(second, "other", "db"), 15)
        is not None
    )


def test_the_relay_merges_both_ends_and_reports_a_node_gone(two_nodes: Running, tmp_path: Path) -> None:
    """`meshagent relay` before both agents: a connection from node-1 to node-2 is seen from both ends
    (egress at node-1, ingress at node-2) in one time-ordered stream; a killed agent is reported in the
    stream and the status, and followed again once restarted."""
    first, second = two_nodes.agents
    web, db = two_nodes.pods["web"], two_nodes.pods["db"]
    sock = tmp_path / "relay.sock"
    with open(tmp_path / "relay.log", "wb") as log:
        relay = subprocess.Popen(
            meshagent_command(
                "relay",
                "--peer",
                f"node-1={first.server}",
                "--peer",
                f"node-2={second.server}",
                "--listen-socket",
                str(sock),
                "--sort-drain",
                "0.2",
            ),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        assert seconds_until(sock.exists, 30) is not None, (tmp_path / "relay.log").read_text()
        probe = web.probe("tcp", db.ip, 80, timeout=2.0)
        assert probe["ok"], probe
        flows_of_connection = opb.GetFlowsRequest(
            whitelist=[flow_pb2.FlowFilter(source_port=[str(probe["sport"])], destination_port=["80"])]
        )
        with ObserverClient(f"unix://{sock}") as client:
            seen: list[flow_pb2.Flow] = []

            def both_ends() -> bool:
                seen[:] = [r.flow for r in client.get_flows(flows_of_connection) if r.HasField("flow")]
                return {(f.node_name, f.traffic_direction) for f in seen} >= {
                    ("node-1", flow_pb2.EGRESS),
                    ("node-2", flow_pb2.INGRESS),
                }

            assert seconds_until(both_ends, 10, interval=0.2) is not None, seen
            times = [f.time.ToNanoseconds() for f in seen]
            assert times == sorted(times)
            status = client.server_status()
            assert (status.num_connected_nodes.value, status.num_unavailable_nodes.value) == (2, 0)

            follower = client.get_flows(opb.GetFlowsRequest(follow=True), follow_timeout_s=120)
            states: list[tuple[int, list[str]]] = []

            def follow() -> None:
                for r in follower:
                    if r.HasField("node_status"):
                        states.append((r.node_status.state_change, list(r.node_status.node_names)))
                        if states[-1] == (rpb.NODE_CONNECTED, ["node-2"]) and len(states) > 3:
                            return

            reader = threading.Thread(target=follow, daemon=True)
            reader.start()
            assert seconds_until(lambda: len(states) >= 2, 10) is not None, states
            second.kill()
            assert seconds_until(lambda: (rpb.NODE_UNAVAILABLE, ["node-2"]) in states, 15) is not None
            status = client.server_status()
            assert list(status.unavailable_nodes) == ["node-2"]
            fixed = list(client.get_flows(opb.GetFlowsRequest(number=5)))
            assert any(
                r.node_status.state_change == rpb.NODE_UNAVAILABLE
                and list(r.node_status.node_names) == ["node-2"]
                for r in fixed
                if r.HasField("node_status")
            )
            assert any(r.HasField("flow") and r.flow.node_name == "node-1" for r in fixed)
            second.start()
            reader.join(timeout=30)
            assert not reader.is_alive(), states
            follower.close()
    finally:
        relay.terminate()
        relay.wait(timeout=30)


def test_one_api_server_feeds_the_agents_of_both_nodes(tmp_path: Path) -> None:
    """Both agents read one (emulated) Kubernetes API: a pod relabelled there is let in across nodes."""
    emulator = KubeEmulator()
    emulator.start()
    try:
        with ClusterTopology(2) as cluster:
            first, second = cluster.nodes
            web, other, db = first.add_pod("web"), first.add_pod("other"), second.add_pod("db")
            db.serve(tcp=(80,))
            emulator.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
            for node in yaml.safe_load_all(cluster.manifests()):
                emulator.apply(node)
            for pod, labels, node_name in (
                (web, {"app": "web"}, first.name),
                (other, {"app": "other"}, first.name),
                (db, {"app": "db"}, second.name),
            ):
                emulator.apply(
                    yaml.safe_load(
                        pod_manifest(pod.name, "shop", pod.ip, labels, node=node_name, ipv6=pod.ipv6)
                    )
                )
            emulator.apply(yaml.safe_load(POLICY))
            agents = [NodeAgent(node, tmp_path, api_server=emulator.url) for node in cluster.nodes]
            try:
                start_agents(agents)
                assert allowed(web, db, 80)
                assert not allowed(other, db, 80)
                emulator.apply(
                    yaml.safe_load(
                        pod_manifest(
                            "other", "shop", other.ip, {"app": "web"}, node=first.name, ipv6=other.ipv6
                        )
                    )
                )
                assert seconds_until(lambda: allowed(other, db, 80), 10, interval=0.2) is not None
            finally:
                for agent in agents:
                    agent.close()
    finally:
        emulator.stop()
