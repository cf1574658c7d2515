"""Compiles Services, EndpointSlices and routes into the frontends the socket load-balancer holds.

One `LBEntry` per (ClusterIP, port, protocol): a dual-stack Service has one per family. Its backends are
the usable (ready, not terminating) endpoints of the Service's port of the ClusterIP's family (a socket
hook rewrites an address within its family: an IPv4 ClusterIP never leads to an IPv6 backend). When a
TCPRoute/UDPRoute names the Service as its parent, the backends are instead those of the route's backend
Services, and each backend Service's weight is shared evenly among its endpoints: canary and blue-green
are weight changes on the route.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

from meshagent.model.kernel_state import Protocol
from meshagent.model.services import (
    MAX_BACKENDS,
    MAX_TOTAL_WEIGHT,
    EndpointSlice,
    Frontend,
    IPAddress,
    LBBackend,
    LBEntry,
    ObjectRef,
    Route,
    Service,
    ServicePort,
    address_order,
)

logger = logging.getLogger(__name__)

_TRANSLATED = (Protocol.TCP, Protocol.UDP)  # the socket hooks see TCP and UDP sockets only


@dataclass(frozen=True)
class CompileResult:
    entries: dict[Frontend, LBEntry]
    warnings: tuple[str, ...] = ()


Group = tuple[int, tuple[tuple[IPAddress, int], ...]]  # (weight, backends as (address, port))


class _Compiler:
    def __init__(self, services: Iterable[Service], slices: Iterable[EndpointSlice], routes: Iterable[Route]):
        self.services = {s.ref: s for s in services}
        self.slices: dict[ObjectRef, list[EndpointSlice]] = {}
        for item in slices:
            self.slices.setdefault(ObjectRef(item.ref.namespace, item.service), []).append(item)
        self.routes = sorted(routes, key=lambda r: r.ref)
        self.warnings: list[str] = []

    def endpoints(
        self, service: ObjectRef, port: ServicePort, version: int
    ) -> tuple[tuple[IPAddress, int], ...]:
        """Usable (address, port) pairs of IP `version` of a Service port, from the slices' port of the
        same name."""
        found: set[tuple[IPAddress, int]] = set()
        for item in self.slices.get(service, ()):
            numbers = [p.port for p in item.ports if p.name == port.name and p.protocol == port.protocol]
            if not numbers:
                continue
            for endpoint in item.endpoints:
                if endpoint.usable:
                    found.update(
                        (address, numbers[0]) for address in endpoint.addresses if address.version == version
                    )
        return tuple(sorted(found, key=lambda pair: (address_order(pair[0]), pair[1])))

    def route_for(self, service: Service, port: ServicePort) -> Route | None:
        matching = [
            route
            for route in self.routes
            if route.protocol == port.protocol
            and any(ref == service.ref and p in (None, port.port) for ref, p in route.parents)
        ]
        if len(matching) > 1:
            self.warnings.append(
                f"Service {service.ref.namespace}/{service.ref.name} port {port.port}: several routes "
                f"({', '.join(r.ref.name for r in matching)}); using {matching[0].ref.name}"
            )
        return matching[0] if matching else None

    def groups(self, service: Service, port: ServicePort, version: int) -> list[Group]:
        route = self.route_for(service, port)
        if route is None:
            return [(1, self.endpoints(service.ref, port, version))]
        groups: list[Group] = []
        for backend in route.backends:
            target = self.services.get(backend.service)
            number = port.port if backend.port is None else backend.port
            target_port = None
            if target is not None:
                target_port = next(
                    (p for p in target.ports if p.port == number and p.protocol == port.protocol), None
                )
            if target_port is None:
                # Its share of connections goes to the route's other backends.
                self.warnings.append(
                    f"route {route.ref.namespace}/{route.ref.name}: backend Service "
                    f"{backend.service.namespace}/{backend.service.name} port {number} not found"
                )
                continue
            groups.append((backend.weight, self.endpoints(backend.service, target_port, version)))
        return groups

    def entry(self, service: Service, port: ServicePort, address: IPAddress) -> LBEntry:
        frontend = Frontend(address, port.port, port.protocol)
        backends = _weighted(self.groups(service, port, address.version))
        if len(backends) > MAX_BACKENDS:
            self.warnings.append(
                f"Service {service.ref.namespace}/{service.ref.name} port {port.port}: "
                f"{len(backends)} backends, only the first {MAX_BACKENDS} are used"
            )
            backends = backends[:MAX_BACKENDS]
        return LBEntry(
            frontend=frontend,
            backends=backends,
            affinity_timeout=service.affinity_timeout,
            service=service.ref,
        )


def _weighted(groups: list[Group]) -> tuple[LBBackend, ...]:
    """Each group's weight shared evenly among its backends, in integers: with L the least common multiple
    of the group sizes, a backend of group g gets w_g * L / n_g (exact), rounded down to fit the kernel's
    32-bit sums when that is too large."""
    live = [(weight, backends) for weight, backends in groups if weight > 0 and backends]
    if not live:
        return ()
    scale = math.lcm(*(len(backends) for _, backends in live))
    weight_sum = sum(weight for weight, _ in live)
    exact = weight_sum * scale <= MAX_TOTAL_WEIGHT
    weights: dict[tuple[IPAddress, int], int] = {}
    for weight, backends in live:
        if exact:
            share = weight * scale // len(backends)
        else:
            # Half the bound leaves room for the max(1, ...) of tiny shares.
            share = max(1, weight * (MAX_TOTAL_WEIGHT // 2 // weight_sum) // len(backends))
        for backend in backends:
            weights[backend] = weights.get(backend, 0) + share  # one endpoint in two groups: both shares
    return tuple(sorted(LBBackend(address, port, weight) for (address, port), weight in weights.items()))


def compile_services(
    services: Iterable[Service], slices: Iterable[EndpointSlice], routes: Iterable[Route] = ()
) -> CompileResult:
    compiler = _Compiler(services, slices, routes)
    entries: dict[Frontend, LBEntry] = {}
    for service in sorted(compiler.services.values(), key=lambda s: s.ref):
        for port in service.ports:
            if port.protocol not in _TRANSLATED:
                continue
            for address in service.cluster_ips:
                entry = compiler.entry(service, port, address)
                if entry.frontend in entries:
                    compiler.warnings.append(f"{entry.frontend} claimed twice; keeping the first")
                    continue
                entries[entry.frontend] = entry
    for warning in compiler.warnings:
        logger.warning("%s", warning)
    return CompileResult(entries=entries, warnings=tuple(compiler.warnings))
