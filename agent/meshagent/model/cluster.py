"""Namespaces and pods as the policy engine needs them, and the desired state that groups them."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from meshagent.model.kernel_state import Protocol

# The label the API server puts on every namespace (since Kubernetes 1.21); we add it when missing.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# Annotation that puts a namespace or one policy in audit mode (would-be drops pass, reported as audited).
AUDIT_ANNOTATION = "meshagent.io/audit"


def is_audit_annotation(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: frozenset[tuple[str, str]] = frozenset()
    audit: bool = False

    def label_dict(self) -> dict[str, str]:
        labels = dict(self.labels)
        labels.setdefault(NAMESPACE_NAME_LABEL, self.name)
        return labels


@dataclass(frozen=True, order=True)
class ContainerPort:
    """A port a container declares; only named ones matter for policy (named ports in rules)."""

    name: str
    port: int
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: frozenset[tuple[str, str]] = frozenset()
    ip: IPv4Address | None = None
    node: str = ""
    ports: tuple[ContainerPort, ...] = ()
    host_network: bool = False
    # The pod's IPv6 address (status.podIPs). It carries the pod's identity like `ip`; either may be
    # missing (a single-family pod).
    ipv6: IPv6Address | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        """The container port with this name AND protocol (a named rule port matches only both)."""
        for port in self.ports:
            if port.name == name and port.protocol == protocol:
                return port.port
        return None


@dataclass(frozen=True)
class LocalEndpoint:
    """A pod on this node as the datapath knows it."""

    endpoint_id: int
    ifindex: int


def labels_of(mapping: dict[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(mapping.items())
