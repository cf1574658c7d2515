"""Flow enrichment from what the agent knows of the cluster: who holds an address, what an identity's
labels are, which policy a rule id came from.

The reconciler thread writes; the event thread reads. Each update replaces a whole dictionary entry (or
the whole dictionary), which CPython makes atomic, so readers never see half an update and never lock.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from meshagent.observer.enrich import EndpointInfo, PolicyRef, ServiceRef, WorkloadRef
from meshagent.policy.rules import RuleRef


def workloads_of(pod_obj: dict[str, Any]) -> tuple[WorkloadRef, ...]:
    """The controllers owning a pod, from its ownerReferences (a ReplicaSet stands for its Deployment,
    whose name is the ReplicaSet's without the pod-template hash)."""
    out = []
    for owner in pod_obj.get("metadata", {}).get("ownerReferences") or []:
        kind, name = str(owner.get("kind", "")), str(owner.get("name", ""))
        if kind == "ReplicaSet" and "-" in name:
            kind, name = "Deployment", name.rsplit("-", 1)[0]
        if kind and name:
            out.append(WorkloadRef(name=name, kind=kind))
    return tuple(out)


class ClusterEnricher:
    def __init__(
        self,
        *,
        rule_lookup: Callable[[int], RuleRef | None],
        endpoint_address: Callable[[int], IPv4Address | IPv6Address | None] | None = None,
    ) -> None:
        self._rule_lookup = rule_lookup
        self._endpoint_address = endpoint_address
        self._endpoints: dict[IPv4Address | IPv6Address, EndpointInfo] = {}
        self._identities: dict[int, tuple[str, ...]] = {}
        self._isolating: dict[tuple[int, bool], tuple[PolicyRef, ...]] = {}
        self._services: dict[tuple[IPv4Address | IPv6Address, int, int], ServiceRef] = {}
        self._ifnames: dict[int, str] = {}

    # --- written by the reconciler ---------------------------------------------------------------

    def set_endpoint(self, ip: IPv4Address | IPv6Address, info: EndpointInfo) -> None:
        self._endpoints[ip] = info
        self._identities[info.identity] = info.labels

    def remove_endpoint_of(self, namespace: str, name: str) -> None:
        """Forgets the addresses a pod held (it is gone, or may have a new address)."""
        for ip, info in list(self._endpoints.items()):
            if (info.namespace, info.pod_name) == (namespace, name):
                self._endpoints.pop(ip, None)

    def replace_all(self, endpoints: dict[IPv4Address | IPv6Address, EndpointInfo]) -> None:
        self._endpoints = dict(endpoints)
        self._identities = {info.identity: info.labels for info in endpoints.values()}

    def set_services(self, index: dict[Any, tuple[Any, ...]]) -> None:
        """(backend address, port, protocol) -> the Services it serves (meshagent.services.lookup)."""
        services: dict[tuple[IPv4Address | IPv6Address, int, int], ServiceRef] = {}
        for (address, port, protocol), vias in index.items():
            named = [via.service for via in vias if via.service is not None]
            if named:
                services[(address, port, int(protocol))] = ServiceRef(
                    namespace=named[0].namespace, name=named[0].name
                )
        self._services = services

    def set_interfaces(self, names: dict[int, str]) -> None:
        """ifindex -> name of the local endpoints' host-side interfaces (in the node's namespace)."""
        self._ifnames = names

    def set_isolating(self, isolating: dict[tuple[int, bool], tuple[PolicyRef, ...]]) -> None:
        """(endpoint id, egress) -> the NetworkPolicies isolating that direction, for default denies."""
        self._isolating = isolating

    # --- read on the event path ------------------------------------------------------------------

    def endpoint_by_ip(self, ip: IPv4Address | IPv6Address) -> EndpointInfo | None:
        return self._endpoints.get(ip)

    def labels_by_identity(self, identity: int) -> tuple[str, ...]:
        return self._identities.get(identity, ())

    def policies_by_rule(self, rule_id: int) -> tuple[PolicyRef, ...]:
        ref = self._rule_lookup(rule_id) if rule_id else None
        if ref is None:
            return ()
        return (PolicyRef(kind=ref.kind.value, namespace=ref.namespace, name=ref.name),)

    def isolating_policies(self, endpoint_id: int, egress: bool) -> tuple[PolicyRef, ...]:
        return self._isolating.get((endpoint_id, egress), ())

    def interface_name(self, ifindex: int) -> str | None:
        return self._ifnames.get(ifindex)

    def endpoint_address(self, endpoint_id: int) -> IPv4Address | IPv6Address | None:
        return self._endpoint_address(endpoint_id) if self._endpoint_address is not None else None

    def service_by_addr(self, ip: IPv4Address | IPv6Address, port: int, protocol: int) -> ServiceRef | None:
        """The Service a backend address serves: flows to a backend name the Service the client used."""
        return self._services.get((ip, port, protocol))
