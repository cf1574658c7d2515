"""NetworkPolicy conformance with real packets, modelled on the upstream Kubernetes network-policy e2e
tests: namespaces x, y, z with pods a, b, c each, TCP and UDP echo servers on ports 80 and 81, and after
each scenario a probe of every pair (both protocols, both ports) compared with a truth table.

The pods are spread over three nodes (meshagent.testing.cluster: one node namespace each, routed across an
underlay), each node with its own compiler and datapath, as one agent per node would have them: every
scenario has pairs on one node and pairs across every two nodes, so a verdict is checked both where the
sender's egress and where the receiver's ingress is enforced on different kernels' programs.

The whole path is real: manifests -> parser -> PolicyCompiler -> Datapath.apply (BPF maps) -> tc programs
on the pods' host-side veths -> packets between network namespaces this test creates (and removes).
Truth tables are written by hand from the Kubernetes semantics, not computed by our evaluator.

Every scenario runs on both families: once with IPv4 pods, once with IPv6-only pods (the same truth
tables, IPv6 probes, IPv6 ipBlocks and node addresses), each on the same programs and maps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest
import yaml
from meshagent.datapath.datapath import Datapath
from meshagent.model.cluster import ContainerPort, LocalEndpoint, Namespace, Pod
from meshagent.model.kernel_state import KernelState, Protocol
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.parse import parse_object
from meshagent.testing.cluster import ClusterNode, ClusterTopology, pod_cidr6_of, pod_cidr_of
from meshagent.testing.topology import Pod as NetnsPod

pytestmark = pytest.mark.kernel

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
CELLS = (("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81))
PROBER = Path(__file__).with_name("prober.py")
PROBE_TIMEOUT = 0.5
# Container ports named as in the upstream suite, so named-port rules resolve the same way.
CONTAINER_PORTS = tuple(
    ContainerPort(f"serve-{port}-{proto}", port, Protocol.TCP if proto == "tcp" else Protocol.UDP)
    for proto, port in CELLS
)

Key = tuple[str, str]  # (namespace, pod)
Expect = Callable[[Key, Key, str, int], bool]


NODES = 3


def node_of(ns: str, name: str) -> int:
    """Pods spread over the nodes so that every namespace has pods on each node: every scenario has
    same-node pairs and pairs across every two nodes."""
    return (NAMESPACES.index(ns) + PODS.index(name)) % NODES


FAMILIES = ("ipv4", "ipv6")


def pod_ip(ns: str, name: str, family: str = "ipv4") -> str:
    """In its node's pod CIDR (10.244.<node+1>.0/24 or fd00:10:244:<node+1>::/64), as a real cluster's
    IPAM would place it."""
    host = 10 * (NAMESPACES.index(ns) + 1) + PODS.index(name)
    return str(pod_cidr(node_of(ns, name), family).network_address + host)


def pod_cidr(node: int, family: str) -> IPv4Network | IPv6Network:
    return pod_cidr6_of(node) if family == "ipv6" else pod_cidr_of(node)


def host_prefix(family: str) -> int:
    return 128 if family == "ipv6" else 32


def cluster_cidr(family: str) -> str:
    return "fd00:10:244::/48" if family == "ipv6" else "10.244.0.0/16"


@dataclass
class Node:
    """One node's agent-side half: its compiler (which knows every pod, its own as local endpoints)
    and its datapath."""

    topology: ClusterNode
    datapath: Datapath
    compiler: PolicyCompiler = field(default_factory=PolicyCompiler)


@dataclass
class Cluster:
    topology: ClusterTopology
    nodes: list[Node]
    netns_pods: dict[Key, NetnsPod]
    family: str = "ipv4"  # of the addresses the probes use (the pods have both)

    def address(self, key: Key) -> str:
        pod = self.netns_pods[key]
        return str(pod.ipv6 if self.family == "ipv6" else pod.ip)

    def node_address(self, node: ClusterNode) -> str:
        return str(node.address6 if self.family == "ipv6" else node.address)

    def reset(self) -> None:
        """Fresh desired state: the 3x3 pods, namespaces labelled ns=<name>, no policy."""
        pods = [
            Pod(
                ns,
                name,
                frozenset({("pod", name)}),
                # Dual-stack pods in both runs; the probes use the run's family.
                self.netns_pods[(ns, name)].ip,
                ports=CONTAINER_PORTS,
                ipv6=self.netns_pods[(ns, name)].ipv6,
            )
            for ns in NAMESPACES
            for name in PODS
        ]
        for node in self.nodes:
            node.compiler = PolicyCompiler()
            node.compiler.load(
                namespaces=[Namespace(ns, frozenset({("ns", ns)})) for ns in NAMESPACES],
                pods=pods,
                local=[
                    (key, LocalEndpoint(endpoint_id=i + 1, ifindex=pod.ifindex))
                    for i, (key, pod) in enumerate(sorted(self.netns_pods.items()))
                    if node_of(*key) == node.topology.index
                ],
            )
        self.sync()

    def pod(self, key: Key) -> Pod:
        return self.nodes[0].compiler.pods[key]

    def upsert_pod(self, pod: Pod) -> None:
        for node in self.nodes:
            node.compiler.upsert_pod(pod)
        self.sync()

    def upsert_namespace(self, namespace: Namespace) -> None:
        for node in self.nodes:
            node.compiler.upsert_namespace(namespace)
        self.sync()

    def sync(self) -> None:
        for node in self.nodes:
            result = node.datapath.apply(node.compiler.state())
            assert result.ok, result.errors
        self.flush_conntrack()

    def flush_conntrack(self) -> None:
        """Every probe of a scenario is judged as a new connection, on every node."""
        for node in self.nodes:
            node.datapath.flush_conntrack()

    def apply(self, manifests: str) -> None:
        for doc in yaml.safe_load_all(manifests):
            obj = parse_object(doc)
            assert obj is not None and not isinstance(obj, Namespace | Pod)
            for node in self.nodes:
                node.compiler.upsert_policy(obj)
        self.sync()

    def probe_all(self, pairs: list[tuple[Key, Key, str, int]]) -> dict[tuple[Key, Key, str, int], bool]:
        by_source: dict[Key, list[tuple[Key, Key, str, int]]] = {}
        for cell in pairs:
            by_source.setdefault(cell[0], []).append(cell)
        procs = {}
        for src, cells in by_source.items():
            request = {
                "timeout": PROBE_TIMEOUT,
                "probes": [[proto, self.address(dst), port] for _, dst, proto, port in cells],
            }
            proc = subprocess.Popen(
                self.netns_pods[src].argv(sys.executable, str(PROBER)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs[src] = (proc, json.dumps(request))
        results: dict[tuple[Key, Key, str, int], bool] = {}
        for src, (proc, request) in procs.items():
            out, err = proc.communicate(request, timeout=30)
            assert proc.returncode == 0, err
            results.update(zip(by_source[src], json.loads(out), strict=True))
        return results

    def assert_reachability(self, expect: Expect) -> None:
        keys = [(ns, p) for ns in NAMESPACES for p in PODS]
        cells = [(s, d, proto, port) for s in keys for d in keys if s != d for proto, port in CELLS]
        got = self.probe_all(cells)
        wrong = [c for c in cells if got[c] != expect(*c)]
        if wrong:  # one retry for the cells that disagree: a lost packet is not a policy verdict
            self.flush_conntrack()
            again = self.probe_all(wrong)
            wrong = [c for c in wrong if again[c] != expect(*c)]
        assert not wrong, "reachability differs from the truth table:\n" + "\n".join(
            f"  {s[0]}/{s[1]} -> {d[0]}/{d[1]} {proto}/{port} "
            f"(node {node_of(*s) + 1} -> node {node_of(*d) + 1}): expected "
            f"{'allowed' if expect(s, d, proto, port) else 'denied'}"
            for s, d, proto, port in wrong
        )


@pytest.fixture(scope="module", params=FAMILIES)
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    run = uuid.uuid4().hex[:8]
    family = str(request.param)
    with ClusterTopology(NODES) as topology:
        netns_pods = {}
        for ns in NAMESPACES:
            for name in PODS:
                pod = topology.nodes[node_of(ns, name)].add_pod(
                    f"{ns}{name}",
                    pod_ip(ns, name),
                    # Dual-stack pods in both runs: each family's ipBlocks are judged on that family's
                    # traffic alone, as Kubernetes does.
                    ipv6=pod_ip(ns, name, "ipv6"),
                )
                pod.serve(tcp=(80, 81), udp=(80, 81))
                netns_pods[(ns, name)] = pod
        nodes: list[Node] = []
        try:
            for cluster_node in topology.nodes:
                pin_dir = Path("/sys/fs/bpf") / f"meshagent-test-policy-{run}-{cluster_node.index}"
                datapath = Datapath(pin_dir=pin_dir, netns=cluster_node.netns)
                datapath.load()
                nodes.append(Node(cluster_node, datapath))
            yield Cluster(topology, nodes, netns_pods, family)
        finally:
            for node in nodes:
                node.datapath.apply(KernelState())
                node.datapath.uninstall()


@pytest.fixture
def k8s(cluster: Cluster) -> Cluster:
    cluster.reset()
    return cluster


def everything(_s: Key, _d: Key, _proto: str, _port: int) -> bool:
    return True


def test_no_policy_allows_everything(k8s: Cluster) -> None:
    k8s.assert_reachability(everything)


def test_default_deny_ingress(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
""")
    k8s.assert_reachability(lambda s, d, proto, port: d[0] != "x")


def test_allow_from_namespace(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: allow-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
""")
    k8s.assert_reachability(lambda s, d, proto, port: d != ("x", "a") or s[0] == "y")


def test_allow_from_pod_in_namespace(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: allow-yb, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}
      podSelector: {matchLabels: {pod: b}}
""")
    k8s.assert_reachability(lambda s, d, proto, port: d != ("x", "a") or s == ("y", "b"))


def test_named_ports(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: serve-81-tcp}, {protocol: UDP, port: serve-80-udp}]
""")
    k8s.assert_reachability(
        lambda s, d, proto, port: d != ("x", "a") or (proto, port) in (("tcp", 81), ("udp", 80))
    )


def test_end_port(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{protocol: TCP, port: 81, endPort: 90}, {protocol: UDP, port: 70, endPort: 80}]}]
""")
    k8s.assert_reachability(
        lambda s, d, proto, port: d != ("x", "a") or (proto, port) in (("tcp", 81), ("udp", 80))
    )


def test_ip_block_with_except(k8s: Cluster) -> None:
    family, host = k8s.family, host_prefix(k8s.family)
    not_yb = f"{pod_ip('y', 'b', family)}/{host}"
    not_za = f"{pod_ip('z', 'a', family)}/{host}"
    k8s.apply(f"""
kind: NetworkPolicy
metadata: {{name: egress-cidr, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{ipBlock: {{cidr: "{cluster_cidr(family)}", except: ["{not_yb}"]}}}}]}}]
---
kind: NetworkPolicy
metadata: {{name: ingress-cidr, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: b}}}}
  ingress: [{{from: [{{ipBlock: {{cidr: "{pod_cidr(2, family)}", except: ["{not_za}"]}}}}]}}]
""")

    def expect(s: Key, d: Key, proto: str, port: int) -> bool:
        if s == ("x", "a") and d == ("y", "b"):
            return False
        if d == ("x", "b"):  # the pods of the third node's pod CIDR, but z/a
            return node_of(*s) == 2 and s != ("z", "a")
        return True

    k8s.assert_reachability(expect)


def test_egress_deny_all(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: no-egress, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}
""")
    k8s.assert_reachability(lambda s, d, proto, port: s != ("x", "a"))


def test_multiple_policies_are_a_union(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]
---
kind: NetworkPolicy
metadata: {name: from-zc, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]}]
""")

    def expect(s: Key, d: Key, proto: str, port: int) -> bool:
        if d[0] != "x":
            return True
        if s == ("z", "c"):
            return True
        return d == ("x", "a") and s[0] == "y" and (proto, port) == ("tcp", 80)

    k8s.assert_reachability(expect)


def test_policy_updated_in_place(k8s: Cluster) -> None:
    policy = """
kind: NetworkPolicy
metadata: {name: moving, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: NS}}}]}]
"""
    k8s.apply(policy.replace("NS", "y"))
    k8s.assert_reachability(lambda s, d, proto, port: d != ("x", "a") or s[0] == "y")
    k8s.apply(policy.replace("NS", "z"))
    k8s.assert_reachability(lambda s, d, proto, port: d != ("x", "a") or s[0] == "z")


def test_pod_relabelled(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: clients, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]
""")
    k8s.assert_reachability(lambda s, d, proto, port: d != ("x", "a"))
    yb = k8s.pod(("y", "b"))
    k8s.upsert_pod(replace(yb, labels=yb.labels | {("role", "client")}))
    k8s.assert_reachability(lambda s, d, proto, port: d != ("x", "a") or s == ("y", "b"))


def test_namespace_relabelled(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: blue-team, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]
""")
    k8s.assert_reachability(lambda s, d, proto, port: d != ("x", "a"))
    k8s.upsert_namespace(Namespace("z", frozenset({("ns", "z"), ("team", "blue")})))
    k8s.assert_reachability(lambda s, d, proto, port: d != ("x", "a") or s[0] == "z")


def test_admin_deny_wins_and_audit_mode_passes(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec: {podSelector: {}, ingress: [{}]}
---
kind: AdminNetworkPolicy
metadata: {name: no-y-to-x-80}
spec:
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}],
             ports: [{portNumber: {protocol: TCP, port: 80}}]}]
---
kind: NetworkPolicy
metadata: {name: deny-all-audited, namespace: z, annotations: {meshagent.io/audit: "true"}}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
""")
    k8s.assert_reachability(
        lambda s, d, proto, port: not (s[0] == "y" and d[0] == "x" and (proto, port) == ("tcp", 80))
    )


def probe_from_node(node: ClusterNode, probes: list[tuple[str, str, int]]) -> list[bool]:
    """Probes sent by the node itself (from its InternalIP: see meshagent.testing.cluster)."""
    request = {"timeout": PROBE_TIMEOUT, "probes": [list(p) for p in probes]}
    result = subprocess.run(
        ["ip", "netns", "exec", node.netns, sys.executable, str(PROBER)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return list(json.loads(result.stdout))


def assert_from_node(
    k8s: Cluster, node: ClusterNode, probes: list[tuple[str, str, int]], expected: bool
) -> None:
    """Every probe from the node gets `expected`; as for the grid, the probes that disagree get one more
    try (a first packet across the underlay waits for ARP, and a loaded machine may lose the race)."""
    got = probe_from_node(node, probes)
    wrong = [p for p, ok in zip(probes, got, strict=True) if ok != expected]
    if wrong:
        k8s.flush_conntrack()
        again = probe_from_node(node, wrong)
        wrong = [p for p, ok in zip(wrong, again, strict=True) if ok != expected]
    assert not wrong, f"from {node.name}: expected {'allowed' if expected else 'denied'}: {wrong}"


def test_traffic_from_the_node_is_always_allowed(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
""")
    # x/a lives on the first node, x/b on the second.
    first = k8s.topology.nodes[node_of("x", "a")]
    to_xa = [("tcp", k8s.address(("x", "a")), 80), ("udp", k8s.address(("x", "a")), 81)]
    to_xb = [("tcp", k8s.address(("x", "b")), 80), ("udp", k8s.address(("x", "b")), 81)]

    # Unknown to the compilers, node addresses are "world": isolated pods refuse them.
    assert_from_node(k8s, first, to_xa, False)
    # Each agent knows its own node's InternalIP (from its Node object) as the host.
    for node in k8s.nodes:
        node.compiler.set_host_addresses([node.topology.address, node.topology.address6])
    k8s.sync()
    assert_from_node(k8s, first, to_xa, True)
    # Another node is not the pod's host: Kubernetes exempts only the pod's own node from isolation.
    assert_from_node(k8s, first, to_xb, False)
    k8s.assert_reachability(lambda s, d, proto, port: s[0] != "x" and d[0] != "x")


def test_ip_block_admits_a_remote_node(k8s: Cluster) -> None:
    """A remote node is an address like any outside the cluster's pods: an ipBlock naming its InternalIP
    admits it, and only it."""
    second, third = k8s.topology.nodes[1], k8s.topology.nodes[2]
    k8s.apply(f"""
kind: NetworkPolicy
metadata: {{name: from-node-2, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{ipBlock: {{cidr: "{k8s.node_address(second)}/{host_prefix(k8s.family)}"}}}}]}}]
""")
    to_xa = [("tcp", k8s.address(("x", "a")), 80), ("udp", k8s.address(("x", "a")), 81)]
    assert_from_node(k8s, second, to_xa, True)
    assert_from_node(k8s, third, to_xa, False)
    k8s.assert_reachability(lambda s, d, proto, port: d != ("x", "a"))
