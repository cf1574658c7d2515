"""NetworkPolicy conformance with real packets, modelled on the upstream Kubernetes network-policy e2e
tests: namespaces x, y, z with pods a, b, c each, TCP and UDP echo servers on ports 80 and 81, and after
each scenario a probe of every pair (both protocols, both ports) compared with a truth table.

The whole path is real: manifests -> parser -> PolicyCompiler -> Datapath.apply (BPF maps) -> tc programs
on the pods' host-side veths -> packets between network namespaces this test creates (and removes).
Truth tables are written by hand from the Kubernetes semantics, not computed by our evaluator.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml
from meshagent.datapath.datapath import Datapath
from meshagent.model.cluster import ContainerPort, LocalEndpoint, Namespace, Pod
from meshagent.model.kernel_state import KernelState, Protocol
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.parse import parse_object
from meshagent.testing.topology import GATEWAY, Topology
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


def pod_ip(ns: str, name: str) -> str:
    return f"10.244.{NAMESPACES.index(ns) + 1}.{(PODS.index(name) + 1) * 10}"


@dataclass
class Cluster:
    topology: Topology
    datapath: Datapath
    netns_pods: dict[Key, NetnsPod]
    compiler: PolicyCompiler | None = None

    def reset(self) -> None:
        """Fresh desired state: the 3x3 pods, namespaces labelled ns=<name>, no policy."""
        self.compiler = PolicyCompiler()
        self.compiler.load(
            namespaces=[Namespace(ns, frozenset({("ns", ns)})) for ns in NAMESPACES],
            pods=[
                Pod(
                    ns,
                    name,
                    frozenset({("pod", name)}),
                    self.netns_pods[(ns, name)].ip,
                    ports=CONTAINER_PORTS,
                )
                for ns in NAMESPACES
                for name in PODS
            ],
            local=[
                (key, LocalEndpoint(endpoint_id=i + 1, ifindex=pod.ifindex))
                for i, (key, pod) in enumerate(sorted(self.netns_pods.items()))
            ],
        )
        self.sync()

    @property
    def model(self) -> PolicyCompiler:
        assert self.compiler is not None
        return self.compiler

    def sync(self) -> None:
        result = self.datapath.apply(self.model.state())
        assert result.ok, result.errors
        self.datapath.flush_conntrack()  # every probe of a scenario is judged as a new connection

    def apply(self, manifests: str) -> None:
        for doc in yaml.safe_load_all(manifests):
            obj = parse_object(doc)
            assert obj is not None and not isinstance(obj, Namespace | Pod)
            self.model.upsert_policy(obj)
        self.sync()

    def probe_all(self, pairs: list[tuple[Key, Key, str, int]]) -> dict[tuple[Key, Key, str, int], bool]:
        by_source: dict[Key, list[tuple[Key, Key, str, int]]] = {}
        for cell in pairs:
            by_source.setdefault(cell[0], []).append(cell)
        procs = {}
        for src, cells in by_source.items():
            request = {
                "timeout": PROBE_TIMEOUT,
                "probes": [[proto, str(self.netns_pods[dst].ip), port] for _, dst, proto, port in cells],
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
            self.datapath.flush_conntrack()
            again = self.probe_all(wrong)
            wrong = [c for c in wrong if again[c] != expect(*c)]
        assert not wrong, "reachability differs from the truth table:\n" + "\n".join(
            f"  {s[0]}/{s[1]} -> {d[0]}/{d[1]} {proto}/{port}: expected "
            f"{'allowed' if expect(s, d, proto, port) else 'denied'}"
            for s, d, proto, port in wrong
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-test-policy-{uuid.uuid4().hex[:8]}"
    with Topology() as topology:
        netns_pods = {}
        for ns in NAMESPACES:
            for name in PODS:
                pod = topology.add_pod(f"{ns}{name}", pod_ip(ns, name))
                pod.serve(tcp=(80, 81), udp=(80, 81))
                netns_pods[(ns, name)] = pod
        datapath = Datapath(pin_dir=pin_dir, netns=topology.node)
        datapath.load()
        try:
            yield Cluster(topology, datapath, netns_pods)
        finally:
            datapath.apply(KernelState())
            datapath.uninstall()


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
    k8s.apply(f"""
kind: NetworkPolicy
metadata: {{name: egress-cidr, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: ["{pod_ip("y", "b")}/32"]}}}}]}}]
---
kind: NetworkPolicy
metadata: {{name: ingress-cidr, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: b}}}}
  ingress: [{{from: [{{ipBlock: {{cidr: 10.244.3.0/24, except: ["{pod_ip("z", "c")}/32"]}}}}]}}]
""")

    def expect(s: Key, d: Key, proto: str, port: int) -> bool:
        if s == ("x", "a") and d == ("y", "b"):
            return False
        if d == ("x", "b"):
            return s[0] == "z" and s != ("z", "c")
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
    yb = k8s.model.pods[("y", "b")]
    k8s.model.upsert_pod(replace(yb, labels=yb.labels | {("role", "client")}))
    k8s.sync()
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
    k8s.model.upsert_namespace(Namespace("z", frozenset({("ns", "z"), ("team", "blue")})))
    k8s.sync()
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


def test_traffic_from_the_node_is_always_allowed(k8s: Cluster) -> None:
    k8s.apply("""
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
""")

    def from_node() -> list[bool]:
        request = {
            "timeout": PROBE_TIMEOUT,
            "probes": [["tcp", pod_ip("x", "a"), 80], ["udp", pod_ip("x", "b"), 81]],
        }
        result = subprocess.run(
            ["ip", "netns", "exec", k8s.topology.node, sys.executable, str(PROBER)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return list(json.loads(result.stdout))

    # Unknown to the compiler, the node's address is "world": isolated pods refuse it.
    assert from_node() == [False, False]
    # Known as the node (the topology's gateway address is the node side of every pod's route).
    k8s.model.set_host_addresses([IPv4Address(GATEWAY)])
    k8s.sync()
    assert from_node() == [True, True]
    k8s.assert_reachability(lambda s, d, proto, port: s[0] != "x" and d[0] != "x")
