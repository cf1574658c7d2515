"""A pod known only by its IPv6 address is isolated when a policy selects it, never left open.

Policy is judged on IPv4. A pod whose status lists only IPv6 addresses used to be ignored: no
endpoint, no programs, so a deny-all policy let every IPv6 connection through. Real packets between
pods with IPv6 addresses, through the whole agent fed by a manifest directory.
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


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Agent, Path, Pod, Pod]]:
    with Topology() as topo:
        client = topo.add_pod("client", "10.244.9.10", ipv6="fd00:9::10")
        client.serve(tcp=(80,))
        # Its namespace has an IPv4 address too, which the cluster does not know of: whatever it sends
        # from that address is a spoofed source once the pod is under policy.
        v6only = topo.add_pod("v6only", "10.244.9.20", ipv6="fd00:9::20")
        v6only.serve(tcp=(80,))
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


def reaches(client: Pod, address: str) -> bool:
    return bool(client.probe("tcp", address, 80, timeout=1.0)["ok"])


def drops_of_unsupported_l3(agent: Agent) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return sum(
        s.value
        for s in families["meshagent_drop"].samples
        if s.name.endswith("_total") and s.labels["reason"] == "UNSUPPORTED_L3_PROTOCOL"
    )


def test_a_policy_on_an_ipv6_only_pod_isolates_it(world: tuple[Agent, Path, Pod, Pod]) -> None:
    agent, manifests, client, v6only = world
    # The agent found the pod's interface by its IPv6 host route.
    assert eventually(lambda: agent.status().endpoints.get("six/v6only", "").startswith("ready"), 10), (
        agent.status()
    )
    # Not under policy: nothing to enforce, IPv6 flows, and so does IPv4 from its unknown address.
    assert reaches(client, "fd00:9::20")
    assert v6only.probe("tcp", str(client.ip), 80, timeout=1.0)["ok"]
    drops_before = drops_of_unsupported_l3(agent)

    (manifests / "policy.yaml").write_text(DENY_ALL_INGRESS)
    assert eventually(lambda: not reaches(client, "fd00:9::20"), timeout=10) is not None
    assert eventually(lambda: drops_of_unsupported_l3(agent) > drops_before) is not None
    # Neighbour discovery still passes: with the cache emptied, a ping to the gateway (its echo is
    # dropped) still gets the gateway's link-layer address resolved.
    v6only.run("ip", "-6", "neigh", "flush", "dev", "eth0", check=True)
    assert v6only.run("ping", "-6", "-c", "1", "-W", "1", "fe80::1%eth0").returncode != 0
    neighbours = v6only.run("ip", "-6", "neigh", "show", "fe80::1", "dev", "eth0").stdout
    assert "lladdr" in neighbours, neighbours
    # IPv4 from an address the cluster does not know the pod by is a spoofed source under policy.
    assert not v6only.probe("tcp", str(client.ip), 80, timeout=1.0)["ok"]

    # The policy gone, the pod is open again.
    (manifests / "policy.yaml").unlink()
    assert eventually(lambda: reaches(client, "fd00:9::20"), timeout=10) is not None
