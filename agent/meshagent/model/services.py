"""Services as pure values: what the Kubernetes objects say (Service, EndpointSlice, Gateway API routes)
and what the socket load-balancer must hold (one `LBEntry` per frontend). Host byte order throughout.

The parsers in `meshagent.services.parse` build the first kind from raw Kubernetes dicts; the compiler in
`meshagent.services.compile` turns them into the second; `meshagent.datapath.socklb` writes that to the
kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from meshagent.model.kernel_state import Protocol

# Backends one frontend can hold in the kernel (MA_LB_SLOTS in bpf/lib/lb_types.h).
MAX_BACKENDS = 64
# Kubernetes' default for sessionAffinityConfig.clientIP.timeoutSeconds.
DEFAULT_AFFINITY_TIMEOUT = 10800
# The largest weight sum the kernel's 32-bit arithmetic takes (kept well below 2**32).
MAX_TOTAL_WEIGHT = 1 << 30

IPAddress = IPv4Address | IPv6Address


def address_order(address: IPAddress) -> tuple[int, int]:
    """A sort key over both families (IPv4 first): addresses of two families do not compare."""
    return (address.version, int(address))


class ServiceInputError(ValueError):
    """A Service, EndpointSlice or route that cannot be used, with where it came from and why."""

    def __init__(self, reason: str, *, kind: str = "", namespace: str = "", name: str = "") -> None:
        self.reason = reason
        self.kind = kind
        self.namespace = namespace
        self.name = name
        where = "/".join(part for part in (namespace, name) if part)
        prefix = f"{kind} {where}".strip()
        super().__init__(f"{prefix}: {reason}" if prefix else reason)


@dataclass(frozen=True, order=True)
class ObjectRef:
    namespace: str
    name: str


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: Protocol
    port: int
    target_port: int | str  # a number or a container port name; endpoint ports come from EndpointSlices


@dataclass(frozen=True)
class Service:
    ref: ObjectRef
    # Primary family first, at most one per family; empty for headless and ExternalName Services.
    cluster_ips: tuple[IPAddress, ...]
    ports: tuple[ServicePort, ...]
    affinity_timeout: int = 0  # seconds of ClientIP affinity; 0 without affinity


@dataclass(frozen=True)
class EndpointPort:
    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[IPAddress, ...]  # all of the slice's addressType
    ready: bool = True
    terminating: bool = False

    @property
    def usable(self) -> bool:
        """Chosen for new connections: ready and not terminating."""
        return self.ready and not self.terminating


@dataclass(frozen=True)
class EndpointSlice:
    ref: ObjectRef
    service: str  # the kubernetes.io/service-name label: the Service in the same namespace
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class RouteBackend:
    """A Gateway API backendRef to a Service (in `namespace`) with its weight."""

    service: ObjectRef
    port: int | None
    weight: int


@dataclass(frozen=True)
class Route:
    """A TCPRoute or UDPRoute whose parent is a Service (the Gateway API's mesh pattern): connections to
    the parent Service's port are split between the backend Services by weight."""

    ref: ObjectRef
    protocol: Protocol  # TCP for TCPRoute, UDP for UDPRoute
    parents: tuple[tuple[ObjectRef, int | None], ...]  # (Service, port or None for every port)
    backends: tuple[RouteBackend, ...]


@dataclass(frozen=True)
class ServiceTranslation:
    """One decision of the socket load-balancer: a socket asked for `frontend` and got `backend`
    (None when refused because the Service has no usable backend)."""

    timestamp_ns: int  # CLOCK_MONOTONIC
    socket_cookie: int
    netns_cookie: int
    frontend: Frontend
    backend: tuple[IPAddress, int] | None


@functools.total_ordering
@dataclass(frozen=True)
class Frontend:
    address: IPAddress
    port: int
    protocol: Protocol

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Frontend):
            return NotImplemented
        return (address_order(self.address), self.port, self.protocol) < (
            address_order(other.address),
            other.port,
            other.protocol,
        )


@functools.total_ordering
@dataclass(frozen=True)
class LBBackend:
    address: IPAddress
    port: int
    weight: int

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, LBBackend):
            return NotImplemented
        return (address_order(self.address), self.port, self.weight) < (
            address_order(other.address),
            other.port,
            other.weight,
        )


@dataclass(frozen=True)
class LBEntry:
    """What the kernel holds for one frontend: backends with their weights (in a fixed order) and the
    affinity timeout. No backends (or zero total weight) means connections are refused."""

    frontend: Frontend
    backends: tuple[LBBackend, ...] = ()
    affinity_timeout: int = 0
    service: ObjectRef | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if len(self.backends) > MAX_BACKENDS:
            raise ValueError(f"{len(self.backends)} backends for {self.frontend}: at most {MAX_BACKENDS}")
        if any(b.address.version != self.frontend.address.version for b in self.backends):
            raise ValueError(f"a backend of {self.frontend} is of the other address family")
        if any(b.weight < 0 for b in self.backends):
            raise ValueError("a backend weight is negative")
        if self.total_weight > MAX_TOTAL_WEIGHT:
            raise ValueError(f"total weight {self.total_weight} is over {MAX_TOTAL_WEIGHT}")
        if not 0 <= self.affinity_timeout <= 0xFFFFFFFF:
            raise ValueError(f"bad affinity timeout {self.affinity_timeout}")

    @property
    def total_weight(self) -> int:
        return sum(b.weight for b in self.backends)
