"""The demo's cluster as Kubernetes YAML: a shop (frontend -> cart -> db) and a stray client.

Policies: default deny in `shop` and `data`, precise allows along the call chain, and the `data`
namespace's policies in audit mode, so that a would-be drop at the database passes and is reported.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path


@dataclass(frozen=True)
class DemoPod:
    namespace: str
    name: str
    ip: IPv4Address
    app: str
    port: int  # where its server listens (0: no server)


PODS = (
    DemoPod("shop", "frontend", IPv4Address("10.244.0.10"), "frontend", 8080),
    DemoPod("shop", "cart", IPv4Address("10.244.0.20"), "cart", 8080),
    DemoPod("data", "db", IPv4Address("10.244.0.30"), "db", 5432),
    DemoPod("default", "stray", IPv4Address("10.244.0.40"), "stray", 0),
)

NAMESPACES = textwrap.dedent("""\
    apiVersion: v1
    kind: Namespace
    metadata: {name: shop, labels: {team: shop}}
    ---
    apiVersion: v1
    kind: Namespace
    metadata:
      name: data
      labels: {team: data}
      annotations: {meshagent.io/audit: "true"}   # report would-be drops here, do not enforce them
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: default}
    """)

POLICIES = textwrap.dedent("""\
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: default-deny, namespace: shop}
    spec: {podSelector: {}, policyTypes: [Ingress]}
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: frontend-public, namespace: shop}
    spec:
      podSelector: {matchLabels: {app: frontend}}
      ingress: [{ports: [{port: 8080}]}]
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: cart-from-frontend, namespace: shop}
    spec:
      podSelector: {matchLabels: {app: cart}}
      ingress:
      - from: [{podSelector: {matchLabels: {app: frontend}}}]
        ports: [{port: 8080}]
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: db-from-cart, namespace: data}
    spec:
      podSelector: {matchLabels: {app: db}}
      ingress:
      - from:
        - namespaceSelector: {matchLabels: {team: shop}}
          podSelector: {matchLabels: {app: cart}}
        ports: [{port: 5432}]
    """)


def pod_yaml(pod: DemoPod, node: str, ip: IPv4Address | None = None, ipv6: IPv6Address | None = None) -> str:
    ports = f"ports: [{{containerPort: {pod.port}}}]" if pod.port else "ports: []"
    address = ip or pod.ip
    # A dual-stack pod lists both addresses, as the API server reports them.
    both = f', podIPs: [{{ip: "{address}"}}, {{ip: "{ipv6}"}}]' if ipv6 is not None else ""
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: {pod.name}, namespace: {pod.namespace}, labels: {{app: {pod.app}}}}}
        spec:
          nodeName: {node}
          containers: [{{name: main, image: demo, {ports}}}]
        status: {{podIP: "{address}"{both}}}
        """)


def write(
    directory: Path,
    node: str,
    *,
    placement: dict[str, tuple[str, IPv4Address, IPv6Address]] | None = None,
    nodes_yaml: str = "",
) -> None:
    """The demo's objects; `placement` puts pods on other nodes with other addresses (by pod name:
    node, IPv4 and IPv6 address), and `nodes_yaml` adds the Node objects of a multi-node cluster."""
    placed = placement or {}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "namespaces.yaml").write_text(NAMESPACES)
    (directory / "pods.yaml").write_text(
        "---\n".join(pod_yaml(pod, *placed.get(pod.name, (node, pod.ip))) for pod in PODS)
    )
    (directory / "policies.yaml").write_text(POLICIES)
    if nodes_yaml:
        (directory / "nodes.yaml").write_text(nodes_yaml)
