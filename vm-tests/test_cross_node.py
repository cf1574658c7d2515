"""On every kernel of the matrix: two nodes on an underlay, one `meshagent run` per node (the process a
DaemonSet runs, with the socket load-balancer on), real packets between pods of different nodes.

    node-1: web, other, cache (serves 80, 81), client, blue (serves 8080)
    node-2: db (serves 80, 81), api, green (serves 8080)

Policy is checked in both directions: db (node-2) admits web from node-1 on port 80 only; cache (node-1)
admits api from node-2 on port 80 only; api's egress (enforced on node-2) goes to cache only, so a pod of
node-1 with no policy of its own is still out of api's reach. Each decision needs the identity of a pod
that lives on the other node. The nodes' own InternalIPs are the host of their node's pods and a remote
node for the other's. A Service whose backends are on both nodes splits connections by a TCPRoute's
weights; one whose only backend is on the other node is reached from node-2. Then node-2's agent is
killed: both kernels keep enforcing and translating, node-1's agent keeps serving flows, and the restarted
agent adopts what it finds and reports its node's drops again.

One cluster and one pair of agents for the module: under TCG each agent start compiles its programs
(30-90 s each), which is most of this file's time.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from meshagent.datapath.socklb import cgroup2_mount
from meshagent.observer.client import ObserverClient
from meshagent.observer.proto.flow import flow_pb2
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.testing.agents import NodeAgent
from meshagent.testing.cluster import ClusterTopology
from meshagent.testing.topology import Pod

from tests.agent.test_agent_e2e import pod_manifest
from tests.policy import prober
from tests.socklb.conftest import _remove_cgroup
from tests.socklb.helpers import accepted, endpoint_slice, run_client, service, tcp_route
from tests.waiting import seconds_until

# Setting up the module (two agents, each compiling its programs in a TCG guest) can take longer than
# the project's default per-test limit on a busy machine.
pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1200)]

NAMESPACE = "default"
# Each pod's node (an index into the cluster's nodes) and address, inside that node's pod CIDR.
PLACEMENT = {
    "client": (0, "10.244.1.10"),
    "blue": (0, "10.244.1.11"),
    "web": (0, "10.244.1.12"),
    "other": (0, "10.244.1.13"),
    "cache": (0, "10.244.1.14"),
    "green": (1, "10.244.2.11"),
    "db": (1, "10.244.2.12"),
    "api": (1, "10.244.2.13"),
}
SERVING = {"cache": (80, 81), "blue": (8080,), "db": (80, 81), "green": (8080,)}
VIP = "10.96.9.10"  # shop: blue 75, green 25 (exists nowhere: only a node's socket hook makes it reachable)
BLUE_VIP = "10.96.9.11"
PROBER = prober.__file__
GREEN_VIP = "10.96.9.12"
TCP80 = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
SLICE_PORTS = [{"name": "http", "protocol": "TCP", "port": 8080}]
READY = {"ready": True, "serving": True, "terminating": False}
# Bounds on waiting for an effect, generous because a TCG guest is 10-50x slower than the host; they only
# end a wait that would otherwise never end.
AGENT_START_TIMEOUT = 600.0
EFFECT_TIMEOUT = 60.0

POLICIES = textwrap.dedent(f"""\
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {{name: db-from-web, namespace: {NAMESPACE}}}
    spec:
      podSelector: {{matchLabels: {{app: db}}}}
      policyTypes: [Ingress]
      ingress: [{{from: [{{podSelector: {{matchLabels: {{app: web}}}}}}], ports: [{{port: 80}}]}}]
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {{name: cache-from-api, namespace: {NAMESPACE}}}
    spec:
      podSelector: {{matchLabels: {{app: cache}}}}
      policyTypes: [Ingress]
      ingress: [{{from: [{{podSelector: {{matchLabels: {{app: api}}}}}}], ports: [{{port: 80}}]}}]
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {{name: api-to-cache, namespace: {NAMESPACE}}}
    spec:
      podSelector: {{matchLabels: {{app: api}}}}
      policyTypes: [Egress]
      egress: [{{to: [{{podSelector: {{matchLabels: {{app: cache}}}}}}], ports: [{{port: 80}}]}}]
    """)


def services() -> list[dict[str, Any]]:
    return [
        service("shop", VIP, TCP80),
        service("shop-blue", BLUE_VIP, TCP80),
        service("shop-green", GREEN_VIP, TCP80),
        endpoint_slice("shop-blue", SLICE_PORTS, [(PLACEMENT["blue"][1], READY)]),
        endpoint_slice("shop-green", SLICE_PORTS, [(PLACEMENT["green"][1], READY)]),
        tcp_route("shop", "shop", 80, [("shop-blue", 75), ("shop-green", 25)]),
    ]


@dataclass
class TwoNodes:
    cluster: ClusterTopology
    agents: list[NodeAgent]
    cgroups: list[Path]  # each node's pods' cgroup, where its agent's socket hooks are attached
    pods: dict[str, Pod]
    logs: dict[str, Path]  # what blue's and green's echo servers accepted

    def pod(self, name: str) -> Pod:
        return self.pods[name]

    def connect(self, client: str, address: str, count: int) -> dict[str, Any]:
        """`count` TCP connections to address:80 from `client`, inside its node's cgroup."""
        cgroup = self.cgroups[PLACEMENT[client][0]]
        return run_client(self.pods[client], "tcp", address, "80", "--count", str(count), cgroup=cgroup)

    def accepted(self, backend: str, client: str) -> int:
        return accepted(self.logs[backend], self.pods[client])


def allowed(client: Pod, server: Pod, port: int) -> bool:
    return bool(client.probe("tcp", server.ip, port, timeout=2.0)["ok"])


def from_nodes(cluster: ClusterTopology, probes: list[tuple[int, Pod, int]]) -> list[bool]:
    """TCP exchanges sent by the nodes themselves (from their InternalIPs, by the routes ClusterTopology
    made), all at once: (node index, server, port) each."""
    running = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                cluster.nodes[node].netns,
                sys.executable,
                "-m",
                "meshagent.testing.netprobe",
                "tcp",
                str(server.ip),
                str(port),
                "--timeout",
                "3",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for node, server, port in probes
    ]
    return [process.wait(timeout=90) == 0 for process in running]


def flows_of(agent: NodeAgent) -> list[flow_pb2.Flow]:
    with ObserverClient(agent.server) as client:
        return [r.flow for r in client.get_flows(opb.GetFlowsRequest(number=2000)) if r.HasField("flow")]


def dropped_seen(agent: NodeAgent, source: str, destination: str, direction: int) -> bool:
    """The agent reported a drop of source -> destination, both named (so both identities were known
    on that agent's node), in the given direction of its own pod."""
    return any(
        f.source.pod_name == source
        and f.destination.pod_name == destination
        and f.verdict == flow_pb2.DROPPED
        and f.traffic_direction == direction
        for f in flows_of(agent)
    )


@pytest.fixture(scope="module")
def cluster_of_two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    tmp_path = tmp_path_factory.mktemp("cross-node")
    run = uuid.uuid4().hex[:8]
    cgroups = [cgroup2_mount() / f"meshagent-vmx-{run}-{i}" for i in (1, 2)]
    for path in cgroups:
        path.mkdir()
    try:
        with ClusterTopology(2) as cluster:
            pods = {name: cluster.nodes[node].add_pod(name, ip) for name, (node, ip) in PLACEMENT.items()}
            node_of = {name: cluster.nodes[node].name for name, (node, _) in PLACEMENT.items()}
            logs = {name: tmp_path / f"{name}.log" for name in ("blue", "green")}
            for name, ports in SERVING.items():
                pods[name].serve(tcp=ports, log=logs.get(name))
            manifests = tmp_path / "manifests"
            manifests.mkdir()
            (manifests / "cluster.yaml").write_text(
                "---\n".join(
                    [
                        cluster.manifests(),
                        *(
                            pod_manifest(
                                name, NAMESPACE, pod.ip, {"app": name}, node=node_of[name], ipv6=pod.ipv6
                            )
                            for name, pod in pods.items()
                        ),
                    ]
                )
            )
            (manifests / "policy.yaml").write_text(POLICIES)
            # JSON is YAML: one document per object.
            (manifests / "services.yaml").write_text(
                "".join(f"---\n{json.dumps(obj)}\n" for obj in services())
            )
            agents = [
                NodeAgent(
                    node,
                    tmp_path,
                    manifests=manifests,
                    # A small event ring buffer: the guest has 2 GiB for both agents and their compiles.
                    extra_args=("--socket-lb", "--socket-lb-cgroup", str(cgroup), "--event-buffer-mib", "1"),
                )
                for node, cgroup in zip(cluster.nodes, cgroups, strict=True)
            ]
            try:
                # One after the other: with one vCPU, overlapping compiles would finish no sooner and
                # would double the memory they need at once.
                for agent in agents:
                    agent.start(timeout=AGENT_START_TIMEOUT)
                yield TwoNodes(cluster, agents, cgroups, pods, logs)
            finally:
                for agent in agents:
                    agent.close()
    finally:
        for path in cgroups:
            _remove_cgroup(path)


@pytest.fixture
def two_nodes(cluster_of_two: TwoNodes) -> TwoNodes:
    """The module's cluster with both agents running (one a failed test left killed is started again)."""
    for agent in cluster_of_two.agents:
        if not agent.running():
            agent.start(timeout=AGENT_START_TIMEOUT)
    return cluster_of_two


# (client, server, port): is the connection let through? Each pair crosses the underlay.
CROSS_NODE_POLICY = {
    # node-1 -> node-2, decided at db's ingress on node-2 by the identity of a node-1 pod.
    ("web", "db", 80): True,
    ("web", "db", 81): False,  # db admits port 80 only
    ("other", "db", 80): False,  # other is not web, though it shares web's node
    ("other", "green", 8080): True,  # green has no policy: the underlay path itself is open
    # node-2 -> node-1, decided at api's egress on node-2 and at cache's ingress on node-1.
    ("api", "cache", 80): True,
    ("api", "cache", 81): False,  # api's egress and cache's ingress admit port 80 only
    ("db", "cache", 80): False,  # cache admits api only
    ("api", "blue", 8080): False,  # api's egress goes to cache only; blue has no policy of its own
}


def probe_all(nodes: TwoNodes, pairs: list[tuple[str, str, int]], *, timeout: float = 3.0) -> dict[Any, bool]:
    """TCP echo probes, one prober process per client pod, all at once: a Python start costs seconds in
    a TCG guest, and a refused probe waits its whole timeout."""
    by_client: dict[str, list[tuple[str, str, int]]] = {}
    for pair in pairs:
        by_client.setdefault(pair[0], []).append(pair)
    running = {}
    for client, its_pairs in by_client.items():
        request = {
            "timeout": timeout,
            "probes": [["tcp", str(nodes.pod(server).ip), port] for _, server, port in its_pairs],
        }
        process = nodes.pod(client).popen(
            sys.executable, PROBER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdin is not None
        process.stdin.write(json.dumps(request))
        process.stdin.close()
        running[client] = (process, its_pairs)
    results: dict[Any, bool] = {}
    for process, its_pairs in running.values():
        assert process.stdout is not None and process.stderr is not None
        out, err = process.stdout.read(), process.stderr.read()  # a JSON list and, at most, a traceback
        assert process.wait(timeout=timeout + 60) == 0, f"prober failed: {err}"
        results.update(zip(its_pairs, json.loads(out), strict=True))
    return results


def assert_cross_node_policy(nodes: TwoNodes) -> None:
    assert probe_all(nodes, list(CROSS_NODE_POLICY)) == CROSS_NODE_POLICY


def test_policy_across_nodes_in_both_directions(two_nodes: TwoNodes) -> None:
    # The agents are ready once their first state is applied; this waits only on a slow first apply.
    web, db = two_nodes.pod("web"), two_nodes.pod("db")
    assert seconds_until(lambda: allowed(web, db, 80), EFFECT_TIMEOUT, interval=0.5) is not None
    assert_cross_node_policy(two_nodes)
    first, second = two_nodes.agents
    # Each drop is reported by the node whose kernel made it, naming the pod of the other node.
    assert dropped_seen(second, "other", "db", flow_pb2.INGRESS)
    assert dropped_seen(second, "api", "blue", flow_pb2.EGRESS)
    assert dropped_seen(first, "db", "cache", flow_pb2.INGRESS)


def test_node_addresses_are_host_and_remote_node(two_nodes: TwoNodes) -> None:
    """The Node objects tell each agent its own InternalIP: a node is the host of its own pods (let in
    whatever their policy says) and a remote node for the other's (let in only as policy allows)."""
    cluster = two_nodes.cluster
    db, cache = two_nodes.pod("db"), two_nodes.pod("cache")
    # db and cache admit only a pod of the other node on port 80, so these are the nodes' own doing.
    own_node_to_db, other_node_to_db, own_node_to_cache, other_node_to_cache = from_nodes(
        cluster, [(1, db, 81), (0, db, 80), (0, cache, 81), (1, cache, 80)]
    )
    assert own_node_to_db and own_node_to_cache, "a node is the host of its own pods"
    assert not other_node_to_db and not other_node_to_cache, "the other node is not"


def test_services_across_nodes_through_the_socket_load_balancer(two_nodes: TwoNodes) -> None:
    # From node-1 to the Service with a backend on each node: the route's weights hold across nodes.
    assert seconds_until(lambda: two_nodes.connect("client", VIP, 1)["ok"] == 1, EFFECT_TIMEOUT) is not None
    before = {name: two_nodes.accepted(name, "client") for name in ("blue", "green")}
    total = 200
    result = two_nodes.connect("client", VIP, total)
    assert result["ok"] == total, result
    assert result["peers"] == [f"{VIP}:80"], "the client sees the Service address, not the backend's"
    blue = two_nodes.accepted("blue", "client") - before["blue"]
    green = two_nodes.accepted("green", "client") - before["green"]
    assert blue + green == total
    # Binomial(200, 0.75): a bound of 5 standard deviations (~31 connections); 50/50 is far outside it.
    assert abs(blue - 0.75 * total) < 5 * math.sqrt(total * 0.75 * 0.25), (blue, green)
    assert green > 0, "the backend on the other node was never chosen"
    # From node-2, by its own agent's socket hook, to a Service whose only backend is on node-1.
    before_db = two_nodes.accepted("blue", "db")
    result = two_nodes.connect("db", BLUE_VIP, 10)
    assert result["ok"] == 10, result
    assert two_nodes.accepted("blue", "db") == before_db + 10


def test_one_agent_restarts_while_both_kernels_keep_enforcing_and_translating(two_nodes: TwoNodes) -> None:
    first, second = two_nodes.agents
    second.kill()
    # Without node-2's agent: its kernel keeps enforcing both directions and translating its pods'
    # Service connections; node-1's agent keeps serving flows of the connections it saw.
    assert_cross_node_policy(two_nodes)
    green_before = two_nodes.accepted("green", "client")
    result = two_nodes.connect("client", GREEN_VIP, 5)
    assert result["ok"] == 5, result
    assert two_nodes.accepted("green", "client") == green_before + 5
    result = two_nodes.connect("db", BLUE_VIP, 5)
    assert result["ok"] == 5, result
    served = flows_of(first)
    assert any(f.source.pod_name == "client" and f.destination.pod_name == "green" for f in served)
    with ObserverClient(first.server) as client:
        assert client.server_status().seen_flows > 0

    took = second.start(timeout=AGENT_START_TIMEOUT)
    assert second.ready(), f"not ready after {took:.1f} s"
    # The restarted agent adopted its node's state: the same decisions, and its own drops reported again.
    assert_cross_node_policy(two_nodes)
    result = two_nodes.connect("db", BLUE_VIP, 5)
    assert result["ok"] == 5, result
    assert (
        seconds_until(
            lambda: (
                not allowed(two_nodes.pod("other"), two_nodes.pod("db"), 80)
                and dropped_seen(second, "other", "db", flow_pb2.INGRESS)
            ),
            EFFECT_TIMEOUT,
        )
        is not None
    )
