"""Which WireGuard peers a node should have, from the Node and Pod objects the source reports.

One peer per remote node whose Node object carries a valid public key of its own: its InternalIP is the
endpoint (an IPv4 one when it has one, since an IPv4 underlay carries IPv6 inside just as well), its pods'
addresses of both families the allowed IPs. A key that is invalid, or that two nodes share (or that
equals ours), is rejected with a reason: a shared key would let one node read the other's traffic, so
neither gets a peer (fail closed: in strict mode their pods' traffic is dropped, not sent in the clear).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, TypeAlias

from meshagent.wireguard.keys import WireguardKeyError, parse_public_key

PUBLIC_KEY_ANNOTATION = "meshagent.io/wireguard-public-key"

Address: TypeAlias = IPv4Address | IPv6Address
Network: TypeAlias = IPv4Network | IPv6Network


@dataclass(frozen=True)
class RemoteNode:
    """What the Node object of another node says (key not yet checked)."""

    name: str
    address: Address | None  # InternalIP
    pod_cidrs: tuple[Network, ...]  # both families
    public_key: str | None


@dataclass(frozen=True)
class Peer:
    node: str
    public_key: str
    endpoint: Address
    allowed_ips: frozenset[Address]


@dataclass(frozen=True)
class PeerPlan:
    peers: dict[str, Peer]  # by public key
    # Remote nodes with no peer (no key yet, or rejected), by name: their pods' traffic is plaintext.
    plaintext_nodes: dict[str, RemoteNode]
    rejected: list[str] = field(default_factory=list)  # "node: reason", for logs and status
    remote_pod_cidrs: dict[str, tuple[Network, ...]] = field(default_factory=dict)  # by node name


def node_from_object(obj: Mapping[str, Any]) -> RemoteNode:
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    address = _internal_ip(obj)
    cidrs: list[Network] = []
    for text in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
        try:
            cidrs.append(ip_network(str(text)))
        except ValueError:
            continue
    annotations = metadata.get("annotations") or {}
    key = annotations.get(PUBLIC_KEY_ANNOTATION)
    return RemoteNode(
        name=str(metadata.get("name", "")),
        address=address,
        pod_cidrs=tuple(cidrs),
        public_key=key if isinstance(key, str) else None,
    )


def _internal_ip(obj: Mapping[str, Any]) -> Address | None:
    """The node's IPv4 InternalIP, or its IPv6 one when it has no IPv4 one. IPv4 first, so that a node
    that becomes dual-stack keeps the endpoint its peers already have."""
    found: list[Address] = []
    for entry in (obj.get("status") or {}).get("addresses") or []:
        if entry.get("type") != "InternalIP":
            continue
        try:
            found.append(ip_address(str(entry.get("address"))))
        except ValueError:
            continue
    return min(found, key=lambda address: address.version, default=None)


def pod_addresses_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, set[Address]]:
    """Pod addresses of both families by node name; host-network pods have the node's address, not one of
    their own."""
    by_node: dict[str, set[Address]] = {}
    for pod in pods:
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        node = spec.get("nodeName")
        if not node or spec.get("hostNetwork"):
            continue
        texts = [entry.get("ip") for entry in status.get("podIPs") or []] or [status.get("podIP")]
        for text in texts:
            try:
                by_node.setdefault(str(node), set()).add(ip_address(str(text)))
            except ValueError:
                continue
    return by_node


def plan_peers(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    *,
    local_node: str,
    local_public_key: str,
) -> PeerPlan:
    remote = [node_from_object(obj) for obj in nodes]
    remote = [node for node in remote if node.name and node.name != local_node]
    addresses = pod_addresses_by_node(pods)
    rejected: list[str] = []
    keyed: dict[str, RemoteNode] = {}  # node name -> node, key checked
    plaintext: dict[str, RemoteNode] = {}
    holders: dict[str, list[str]] = {}  # canonical key -> node names
    canonical: dict[str, str] = {}
    for node in remote:
        if node.address is None:
            rejected.append(f"{node.name}: no InternalIP to reach it by")
            plaintext[node.name] = node
            continue
        if node.public_key is None:
            plaintext[node.name] = node
            continue
        try:
            key = parse_public_key(node.public_key)
        except WireguardKeyError as err:
            rejected.append(f"{node.name}: annotation {PUBLIC_KEY_ANNOTATION}: {err}")
            plaintext[node.name] = node
            continue
        canonical[node.name] = key
        holders.setdefault(key, []).append(node.name)
        keyed[node.name] = node
    peers: dict[str, Peer] = {}
    for name, node in keyed.items():
        key = canonical[name]
        if key == local_public_key:
            rejected.append(f"{name}: its public key is this node's own")
            plaintext[name] = node
            continue
        if len(holders[key]) > 1:
            others = ", ".join(sorted(n for n in holders[key] if n != name))
            rejected.append(f"{name}: its public key is also on {others}")
            plaintext[name] = node
            continue
        assert node.address is not None
        peers[key] = Peer(
            node=name,
            public_key=key,
            endpoint=node.address,
            allowed_ips=frozenset(addresses.get(name, ())),
        )
    return PeerPlan(
        peers=peers,
        plaintext_nodes=plaintext,
        rejected=sorted(rejected),
        remote_pod_cidrs={node.name: node.pod_cidrs for node in remote},
    )
