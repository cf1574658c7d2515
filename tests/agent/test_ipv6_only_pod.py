"""A pod known only by its IPv6 address is enforced like any other: its identity, its rules, its address.

A pod whose status lists only IPv6 addresses was once ignored (a deny-all policy let every IPv6
connection through), then isolated whole. Now its policies are enforced on IPv6 as they are on IPv4.
Real packets between pods with IPv6 addresses, through the whole agent fed by a manifest directory.
"""

from __future__ import annotations

import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.agent.runtime import Agent
from meshagent.testing.topology import Pod, Topology
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.test_agent_e2e import eventually, start_agent

pytestmark = pytest.mark.kernel

NODE = "node-1"


def pod_manifest(name: str, addresses: list[str], app: str) -> str:
    ips = ", ".join(f'{{ip: "{a}"}}' for a in addresses)
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, namespace: six, labels: {{app: {app}}}}}
        spec: {{nodeName: {NODE}, containers: [{{name: main, image: app}}]}}
        status: {{podIP: "{addresses[0]}", podIPs: [{ips}]}}
        """)


DENY_ALL_INGRESS = textwrap.dedent("""\
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny-v6only, namespace: six}
    spec:
      podSelector: {matchLabels: {app: v6only}}
      policyTypes: [Ingress]
    """)

CLIENT_ON_80 = textwrap.dedent("""\
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: client-on-80, namespace: six}
    spec:
      podSelector: {matchLabels: {app: v6only}}
      policyTypes: [Ingress]
      ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]
    """)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Agent, Path, Pod, Pod]]:
    with Topology() as topo:
        client = topo.add_pod("client", "10.244.9.10", ipv6="fd00:9::10")
        client.serve(tcp=(80,))
        # Its namespace has an IPv4 address too, which the cluster does not know of: whatever it sends
        # from that address is a spoofed source once the pod is under policy.
        v6only = topo.add_pod("v6only", "10.244.9.20", ipv6="fd00:9::20")
        v6only.serve(tcp=(80, 81))
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        (manifests / "namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: six}\n")
        (manifests / "pods.yaml").write_text(
            "---\n".join(
                [
                    pod_manifest("client", ["10.244.9.10", "fd00:9::10"], "client"),
                    pod_manifest("v6only", ["fd00:9::20"], "v6only"),
                ]
            )
        )
        agent = start_agent(topo, tmp_path, manifests=manifests)
        try:
            yield agent, manifests, client, v6only
        finally:
            agent.stop()


def reaches(client: Pod, address: str, port: int = 80) -> bool:
    return bool(client.probe("tcp", address, port, timeout=1.0)["ok"])


def policy_drops(agent: Agent) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return sum(
        s.value
        for s in families["meshagent_drop"].samples
        if s.name.endswith("_total") and s.labels["reason"] == "POLICY_DENIED"
    )


def test_the_policies_of_an_ipv6_only_pod_are_enforced_on_ipv6(world: tuple[Agent, Path, Pod, Pod]) -> None:
    agent, manifests, client, v6only = world
    # The agent found the pod's interface by its IPv6 host route.
    assert eventually(lambda: agent.status().endpoints.get("six/v6only", "").startswith("ready"), 10), (
        agent.status()
    )
    # Not under policy: IPv6 flows both ways ...
    assert reaches(client, "fd00:9::20") and reaches(client, "fd00:9::20", 81)
    assert v6only.probe("tcp", "fd00:9::10", 80, timeout=1.0)["ok"]
    # ... but IPv4 from an address the cluster does not know the pod by is a spoofed source.
    assert not v6only.probe("tcp", str(client.ip), 80, timeout=1.0)["ok"]

    # A rule of its own: the client on port 80, nothing else.
    (manifests / "policy.yaml").write_text(CLIENT_ON_80)
    assert eventually(lambda: not reaches(client, "fd00:9::20", 81), timeout=10) is not None
    assert reaches(client, "fd00:9::20")
    drops_before = policy_drops(agent)

    (manifests / "policy.yaml").write_text(DENY_ALL_INGRESS)
    assert eventually(lambda: not reaches(client, "fd00:9::20"), timeout=10) is not None
    assert eventually(lambda: policy_drops(agent) > drops_before) is not None
    # Neighbour discovery still passes: with the cache emptied, the pod resolves its gateway.
    v6only.run("ip", "-6", "neigh", "flush", "dev", "eth0", check=True)
    assert v6only.probe("tcp", "fd00:9::10", 80, timeout=1.0)["ok"], "egress is not isolated"
    neighbours = v6only.run("ip", "-6", "neigh", "show", "fe80::1", "dev", "eth0").stdout
    assert "lladdr" in neighbours, neighbours

    # The policy gone, the pod is open again.
    (manifests / "policy.yaml").unlink()
    assert eventually(lambda: reaches(client, "fd00:9::20"), timeout=10) is not None
