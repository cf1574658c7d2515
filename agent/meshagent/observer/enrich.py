"""What the flow builder needs to know about addresses, identities, rules and services.

The agent's integrator implements `Enricher` on top of the Kubernetes sources and the policy compiler; the
observer only depends on this protocol. `StaticEnricher` is a plain in-memory implementation for tests,
replay and benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol


@dataclass(frozen=True)
class WorkloadRef:
    """The controller that owns a pod (kind Deployment, StatefulSet, DaemonSet, ...)."""

    name: str
    kind: str


@dataclass(frozen=True)
class EndpointInfo:
    """A pod (local or remote) behind an IP address."""

    identity: int
    namespace: str
    pod_name: str
    labels: tuple[str, ...] = ()  # "key=value"
    workloads: tuple[WorkloadRef, ...] = ()


@dataclass(frozen=True)
class PolicyRef:
    """The policy a datapath rule came from: e.g. ("NetworkPolicy", "shop", "allow-web")."""

    kind: str
    namespace: str
    name: str
    labels: tuple[str, ...] = ()
    revision: int = 0


@dataclass(frozen=True)
class ServiceRef:
    namespace: str
    name: str


class Enricher(Protocol):
    """Metadata lookups; each may return None/empty when it does not know. Called on the hot path: be fast."""

    def endpoint_by_ip(self, ip: IPv4Address | IPv6Address) -> EndpointInfo | None: ...

    def labels_by_identity(self, identity: int) -> tuple[str, ...]: ...

    def policies_by_rule(self, rule_id: int) -> tuple[PolicyRef, ...]: ...

    def service_by_addr(
        self, ip: IPv4Address | IPv6Address, port: int, protocol: int
    ) -> ServiceRef | None: ...

    def isolating_policies(self, endpoint_id: int, egress: bool) -> tuple[PolicyRef, ...]:
        """For a default deny (no rule matched): the policies that isolate this endpoint's direction."""
        ...

    def interface_name(self, ifindex: int) -> str | None:
        """The name of an endpoint's interface (None: not known, look it up locally)."""
        ...

    def endpoint_address(self, endpoint_id: int) -> IPv4Address | IPv6Address | None:
        """A local endpoint's address, for the flows of packets that had none the datapath could read
        (a frame that is not IP): their local side is the endpoint's. Not on the hot path."""
        ...


@dataclass
class StaticEnricher:
    """In-memory `Enricher` filled by hand (tests, replay, benchmarks)."""

    endpoints: dict[IPv4Address | IPv6Address, EndpointInfo] = field(default_factory=dict)
    identities: dict[int, tuple[str, ...]] = field(default_factory=dict)
    rules: dict[int, tuple[PolicyRef, ...]] = field(default_factory=dict)
    services: dict[tuple[IPv4Address | IPv6Address, int, int], ServiceRef] = field(default_factory=dict)
    isolating: dict[tuple[int, bool], tuple[PolicyRef, ...]] = field(default_factory=dict)
    endpoint_addresses: dict[int, IPv4Address | IPv6Address] = field(default_factory=dict)

    def endpoint_by_ip(self, ip: IPv4Address | IPv6Address) -> EndpointInfo | None:
        return self.endpoints.get(ip)

    def labels_by_identity(self, identity: int) -> tuple[str, ...]:
        return self.identities.get(identity, ())

    def policies_by_rule(self, rule_id: int) -> tuple[PolicyRef, ...]:
        return self.rules.get(rule_id, ())

    def service_by_addr(self, ip: IPv4Address | IPv6Address, port: int, protocol: int) -> ServiceRef | None:
        return self.services.get((ip, port, protocol))

    def isolating_policies(self, endpoint_id: int, egress: bool) -> tuple[PolicyRef, ...]:
        return self.isolating.get((endpoint_id, egress), ())

    def interface_name(self, ifindex: int) -> str | None:
        return None

    def endpoint_address(self, endpoint_id: int) -> IPv4Address | IPv6Address | None:
        return self.endpoint_addresses.get(endpoint_id)

    @classmethod
    def from_mappings(
        cls,
        *,
        endpoints: Mapping[IPv4Address | IPv6Address, EndpointInfo] | None = None,
        rules: Mapping[int, tuple[PolicyRef, ...]] | None = None,
        services: Mapping[tuple[IPv4Address | IPv6Address, int, int], ServiceRef] | None = None,
    ) -> StaticEnricher:
        return cls(
            endpoints=dict(endpoints or {}),
            rules=dict(rules or {}),
            services=dict(services or {}),
        )


class NullEnricher:
    """Knows nothing: flows carry only what the datapath event says."""

    def endpoint_by_ip(self, ip: IPv4Address | IPv6Address) -> EndpointInfo | None:
        return None

    def labels_by_identity(self, identity: int) -> tuple[str, ...]:
        return ()

    def policies_by_rule(self, rule_id: int) -> tuple[PolicyRef, ...]:
        return ()

    def service_by_addr(self, ip: IPv4Address | IPv6Address, port: int, protocol: int) -> ServiceRef | None:
        return None

    def isolating_policies(self, endpoint_id: int, egress: bool) -> tuple[PolicyRef, ...]:
        return ()

    def interface_name(self, ifindex: int) -> str | None:
        return None

    def endpoint_address(self, endpoint_id: int) -> IPv4Address | IPv6Address | None:
        return None
