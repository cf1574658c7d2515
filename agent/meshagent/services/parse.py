"""Parsers from raw Kubernetes dicts (Service, EndpointSlice, Gateway API TCPRoute/UDPRoute) to the pure
models of `meshagent.model.services`. A bad object raises ServiceInputError naming it and the reason;
the caller keeps every other object (and the last good version of this one)."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import AddressValueError, ip_address
from typing import Any

from meshagent.model.kernel_state import Protocol
from meshagent.model.services import (
    DEFAULT_AFFINITY_TIMEOUT,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPAddress,
    ObjectRef,
    Route,
    RouteBackend,
    Service,
    ServiceInputError,
    ServicePort,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
GATEWAY_GROUP = "gateway.networking.k8s.io"
ROUTE_PROTOCOLS = {"TCPRoute": Protocol.TCP, "UDPRoute": Protocol.UDP}
_PROTOCOLS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}
MAX_ROUTE_WEIGHT = 1_000_000  # the Gateway API's own bound on a backendRef weight


def _ref(obj: Mapping[str, Any], kind: str) -> ObjectRef:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ServiceInputError("metadata.name is missing", kind=kind)
    namespace = meta.get("namespace") or "default"
    if not isinstance(namespace, str):
        raise ServiceInputError("metadata.namespace is not a string", kind=kind, name=meta["name"])
    return ObjectRef(namespace, meta["name"])


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ServiceInputError(f"{what} is not a list")
    return value


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 0xFFFF:
        raise ServiceInputError(f"{what} {value!r} is not a port number (1-65535)")
    return value


def _protocol(value: Any, what: str) -> Protocol:
    name = "TCP" if value is None else value
    if name not in _PROTOCOLS:
        raise ServiceInputError(f"{what} {value!r} is not TCP, UDP or SCTP")
    return _PROTOCOLS[name]


FAMILIES = {"IPv4": 4, "IPv6": 6}
FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


def _addresses(values: list[Any], what: str, *, version: int | None = None) -> tuple[IPAddress, ...]:
    """Parsed addresses in their order, duplicates dropped; with `version`, any other family is an error."""
    out: list[IPAddress] = []
    for value in values:
        if value in ("None", "", None):  # headless
            continue
        try:
            address = ip_address(value)
        except (ValueError, AddressValueError, TypeError) as err:
            raise ServiceInputError(f"{what} {value!r} is not an IP address") from err
        if version is not None and address.version != version:
            raise ServiceInputError(f"{what} {value!r} is not IPv{version}")
        out.append(address)
    return tuple(dict.fromkeys(out))


def _cluster_ips(spec: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    """spec.clusterIPs (or the older clusterIP), checked against ipFamilies and ipFamilyPolicy the way the
    API server checks them, so a directory manifest cannot hold what a cluster would refuse."""
    listed = _list(spec.get("clusterIPs"), "spec.clusterIPs")
    single = spec.get("clusterIP")
    if listed and single not in (None, "") and listed[0] != single:
        raise ServiceInputError(f"spec.clusterIPs[0] {listed[0]!r} is not spec.clusterIP {single!r}")
    raw = listed or [single]
    if len(raw) > 2:
        raise ServiceInputError(f"spec.clusterIPs has {len(raw)} addresses: at most one per family")
    if "None" in raw and len(raw) > 1:
        raise ServiceInputError("spec.clusterIPs: a headless Service has the single address 'None'")
    ips = _addresses(raw, "spec.clusterIPs")
    if len(ips) == 2 and ips[0].version == ips[1].version:
        raise ServiceInputError("spec.clusterIPs holds two addresses of the same family")
    families = _list(spec.get("ipFamilies"), "spec.ipFamilies")
    for index, family in enumerate(families):
        if not isinstance(family, str) or family not in FAMILIES:
            raise ServiceInputError(f"spec.ipFamilies[{index}] {family!r} is not IPv4 or IPv6")
    if len(set(families)) != len(families):
        raise ServiceInputError("spec.ipFamilies names a family twice")
    for index, address in enumerate(ips):
        if index < len(families) and FAMILIES[families[index]] != address.version:
            raise ServiceInputError(
                f"spec.clusterIPs[{index}] {address} is not of spec.ipFamilies[{index}] {families[index]}"
            )
    if len(ips) > len(families) > 0:
        raise ServiceInputError("spec.clusterIPs has more addresses than spec.ipFamilies has families")
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in FAMILY_POLICIES:
        raise ServiceInputError(f"spec.ipFamilyPolicy {policy!r} is not one of {', '.join(FAMILY_POLICIES)}")
    # Without a policy the API server defaults to RequireDualStack when two families or addresses are
    # given, and to SingleStack otherwise: only an explicit SingleStack contradicts two.
    if policy == "SingleStack" and (len(ips) > 1 or len(families) > 1):
        raise ServiceInputError("spec.ipFamilyPolicy SingleStack allows one family")
    if policy == "RequireDualStack" and (len(families) == 1 or len(ips) == 1):
        raise ServiceInputError("spec.ipFamilyPolicy RequireDualStack needs both families")
    return ips


def _located(err: ServiceInputError, kind: str, ref: ObjectRef) -> ServiceInputError:
    return ServiceInputError(err.reason, kind=kind, namespace=ref.namespace, name=ref.name)


def parse_service(obj: Mapping[str, Any]) -> Service:
    ref = _ref(obj, "Service")
    try:
        return _parse_service(obj, ref)
    except ServiceInputError as err:
        raise _located(err, "Service", ref) from err


def _parse_service(obj: Mapping[str, Any], ref: ObjectRef) -> Service:
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise ServiceInputError("spec is not an object")
    if spec.get("type") == "ExternalName":
        return Service(ref=ref, cluster_ips=(), ports=())
    ips = _cluster_ips(spec)
    ports = []
    for index, port in enumerate(_list(spec.get("ports"), "spec.ports")):
        if not isinstance(port, Mapping):
            raise ServiceInputError(f"spec.ports[{index}] is not an object")
        number = _port(port.get("port"), f"spec.ports[{index}].port")
        target = port.get("targetPort", number)
        if isinstance(target, int):
            target = _port(target, f"spec.ports[{index}].targetPort")
        elif not isinstance(target, str) or not target:
            raise ServiceInputError(f"spec.ports[{index}].targetPort {target!r} is not a port or a name")
        ports.append(
            ServicePort(
                name=str(port.get("name") or ""),
                protocol=_protocol(port.get("protocol"), f"spec.ports[{index}].protocol"),
                port=number,
                target_port=target,
            )
        )
    names = [p.name for p in ports]
    if len(ports) > 1 and len(set(names)) != len(names):
        raise ServiceInputError("spec.ports names are not unique")
    affinity = 0
    if spec.get("sessionAffinity") == "ClientIP":
        config = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
        affinity = DEFAULT_AFFINITY_TIMEOUT if config is None else config
        if isinstance(affinity, bool) or not isinstance(affinity, int) or not 1 <= affinity <= 86400:
            raise ServiceInputError(
                f"sessionAffinityConfig.clientIP.timeoutSeconds {config!r} is not in 1..86400"
            )
    elif spec.get("sessionAffinity") not in (None, "None"):
        raise ServiceInputError(f"sessionAffinity {spec.get('sessionAffinity')!r} is not None or ClientIP")
    return Service(ref=ref, cluster_ips=ips, ports=tuple(ports), affinity_timeout=affinity)


def parse_endpoint_slice(obj: Mapping[str, Any]) -> EndpointSlice:
    ref = _ref(obj, "EndpointSlice")
    try:
        return _parse_endpoint_slice(obj, ref)
    except ServiceInputError as err:
        raise _located(err, "EndpointSlice", ref) from err


def _condition(conditions: Mapping[str, Any], name: str, default: bool) -> bool:
    value = conditions.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ServiceInputError(f"conditions.{name} {value!r} is not a boolean")
    return value


def _parse_endpoint_slice(obj: Mapping[str, Any], ref: ObjectRef) -> EndpointSlice:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL)
    if not isinstance(service, str) or not service:
        raise ServiceInputError(f"label {SERVICE_NAME_LABEL} is missing")
    address_type = obj.get("addressType", "IPv4")
    if address_type not in ADDRESS_TYPES:
        raise ServiceInputError(f"addressType {address_type!r} is not one of {', '.join(ADDRESS_TYPES)}")
    if address_type == "FQDN":
        # Names, not addresses: nothing a socket hook can translate to.
        return EndpointSlice(ref=ref, service=service, ports=(), endpoints=())
    version = FAMILIES[address_type]
    ports = []
    for index, port in enumerate(_list(obj.get("ports"), "ports")):
        if not isinstance(port, Mapping):
            raise ServiceInputError(f"ports[{index}] is not an object")
        if port.get("port") is None:
            continue  # "all ports": only meaningful for Services without a selector and ports
        ports.append(
            EndpointPort(
                name=str(port.get("name") or ""),
                protocol=_protocol(port.get("protocol"), f"ports[{index}].protocol"),
                port=_port(port.get("port"), f"ports[{index}].port"),
            )
        )
    endpoints = []
    for index, item in enumerate(_list(obj.get("endpoints"), "endpoints")):
        if not isinstance(item, Mapping):
            raise ServiceInputError(f"endpoints[{index}] is not an object")
        conditions = item.get("conditions") or {}
        if not isinstance(conditions, Mapping):
            raise ServiceInputError(f"endpoints[{index}].conditions is not an object")
        addresses = _addresses(
            _list(item.get("addresses"), f"endpoints[{index}].addresses"),
            f"endpoints[{index}].addresses: address",
            version=version,
        )
        endpoints.append(
            Endpoint(
                addresses=addresses,
                # The API says a missing `ready` is to be read as ready.
                ready=_condition(conditions, "ready", True),
                terminating=_condition(conditions, "terminating", False),
            )
        )
    return EndpointSlice(ref=ref, service=service, ports=tuple(ports), endpoints=tuple(endpoints))


def parse_route(obj: Mapping[str, Any]) -> Route:
    ref = _ref(obj, str(obj.get("kind") or "Route"))
    kind = obj.get("kind")
    if kind not in ROUTE_PROTOCOLS:
        raise ServiceInputError(
            f"kind {kind!r} is not TCPRoute or UDPRoute", namespace=ref.namespace, name=ref.name
        )
    try:
        return _parse_route(obj, ref, ROUTE_PROTOCOLS[kind])
    except ServiceInputError as err:
        raise _located(err, kind, ref) from err


def _is_service(ref: Mapping[str, Any]) -> bool:
    return ref.get("group", "") in ("", None) and ref.get("kind", "Service") == "Service"


def _parse_route(obj: Mapping[str, Any], ref: ObjectRef, protocol: Protocol) -> Route:
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise ServiceInputError("spec is not an object")
    parents = []
    for index, parent in enumerate(_list(spec.get("parentRefs"), "spec.parentRefs")):
        if not isinstance(parent, Mapping) or not isinstance(parent.get("name"), str):
            raise ServiceInputError(f"spec.parentRefs[{index}] has no name")
        if not _is_service(parent):
            continue  # a Gateway parent: not ours (we only act on the mesh pattern)
        port = parent.get("port")
        parents.append(
            (
                ObjectRef(parent.get("namespace") or ref.namespace, parent["name"]),
                None if port is None else _port(port, f"spec.parentRefs[{index}].port"),
            )
        )
    backends = []
    for r_index, rule in enumerate(_list(spec.get("rules"), "spec.rules")):
        if not isinstance(rule, Mapping):
            raise ServiceInputError(f"spec.rules[{r_index}] is not an object")
        for b_index, backend in enumerate(
            _list(rule.get("backendRefs"), f"spec.rules[{r_index}].backendRefs")
        ):
            where = f"spec.rules[{r_index}].backendRefs[{b_index}]"
            if not isinstance(backend, Mapping) or not isinstance(backend.get("name"), str):
                raise ServiceInputError(f"{where} has no name")
            if not _is_service(backend):
                raise ServiceInputError(f"{where} is not a Service")
            weight = backend.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_ROUTE_WEIGHT:
                raise ServiceInputError(f"{where}.weight {weight!r} is not in 0..{MAX_ROUTE_WEIGHT}")
            port = backend.get("port")
            backends.append(
                RouteBackend(
                    service=ObjectRef(backend.get("namespace") or ref.namespace, backend["name"]),
                    port=None if port is None else _port(port, f"{where}.port"),
                    weight=weight,
                )
            )
    return Route(ref=ref, protocol=protocol, parents=tuple(parents), backends=tuple(backends))
