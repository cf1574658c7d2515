"""Parsers from Kubernetes object dicts (YAML or the API, camelCase) to the policy engine's models.

Every parser validates what the API server would validate (and what the directory source must therefore
check itself) and raises PolicyInputError with a reason a person can act on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from ipaddress import (
    IPv4Address,
    IPv6Address,
    NetmaskValueError,
    ip_address,
    ip_network,
)
from typing import Any

from meshagent.model.admin_policy import (
    MAX_ADMIN_PRIORITY,
    AdminAction,
    AdminNetworkPolicy,
    AdminPort,
    AdminRule,
    AdminSelector,
)
from meshagent.model.cluster import AUDIT_ANNOTATION, ContainerPort, Namespace, Pod, is_audit_annotation
from meshagent.model.errors import PolicyInputError
from meshagent.model.ip import IPNetwork
from meshagent.model.kernel_state import Protocol
from meshagent.model.netpol import IPBlock, NetworkPolicy, PolicyPeer, PolicyPort, PolicyRule, PolicyType
from meshagent.model.selectors import LabelSelector, SelectorOperator, SelectorRequirement

logger = logging.getLogger(__name__)

PolicyObject = Namespace | Pod | NetworkPolicy | AdminNetworkPolicy

_PROTOCOLS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}
# IANA_SVC_NAME as Kubernetes validates a port name: 1-15 chars, lowercase alphanumerics and '-',
# at least one letter, no leading/trailing/double '-'.
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?!-))*[a-z0-9]$|^[a-z]$")


def _fail(reason: str) -> PolicyInputError:
    return PolicyInputError(reason)


def _mapping(value: Any, where: str, *, required: bool = False) -> Mapping[str, Any]:
    if value is None:
        if required:
            raise _fail(f"{where}: required")
        return {}
    if not isinstance(value, Mapping):
        raise _fail(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, val in _mapping(value, where).items():
        if not isinstance(key, str) or not key:
            raise _fail(f"{where}: label keys must be non-empty strings")
        if not isinstance(val, str):
            # YAML turns `app: 1` or `on: true` into non-strings; the API server would refuse them.
            raise _fail(f"{where}.{key}: label value must be a string, got {val!r}")
        result[key] = val
    return result


def parse_selector(value: Any, where: str) -> LabelSelector:
    obj = _mapping(value, where)
    unknown = set(obj) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise _fail(f"{where}: unknown selector fields {sorted(unknown)}")
    labels = _string_map(obj.get("matchLabels"), f"{where}.matchLabels")
    requirements = []
    for i, expr in enumerate(_list(obj.get("matchExpressions"), f"{where}.matchExpressions")):
        at = f"{where}.matchExpressions[{i}]"
        expr = _mapping(expr, at, required=True)
        key = expr.get("key")
        if not isinstance(key, str) or not key:
            raise _fail(f"{at}.key: required non-empty string")
        op_text = expr.get("operator")
        try:
            operator = SelectorOperator(str(op_text))
        except ValueError:
            raise _fail(f"{at}.operator: {op_text!r} is not one of In, NotIn, Exists, DoesNotExist") from None
        values = _list(expr.get("values"), f"{at}.values")
        if not all(isinstance(v, str) for v in values):
            raise _fail(f"{at}.values: must be strings")
        if operator in (SelectorOperator.IN, SelectorOperator.NOT_IN) and not values:
            raise _fail(f"{at}.values: {operator.value} needs at least one value")
        if operator in (SelectorOperator.EXISTS, SelectorOperator.DOES_NOT_EXIST) and values:
            raise _fail(f"{at}.values: {operator.value} takes no values")
        requirements.append(SelectorRequirement(key, operator, frozenset(values)))
    return LabelSelector(frozenset(labels.items()), tuple(requirements))


def _metadata(obj: Mapping[str, Any], *, namespaced: bool) -> tuple[str, str, dict[str, str], dict[str, str]]:
    meta = _mapping(obj.get("metadata"), "metadata", required=True)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise _fail("metadata.name: required")
    namespace = ""
    if namespaced:
        ns = meta.get("namespace", "default")
        if not isinstance(ns, str) or not ns:
            raise _fail("metadata.namespace: must be a non-empty string")
        namespace = ns
    labels = _string_map(meta.get("labels"), "metadata.labels")
    annotations = _string_map(meta.get("annotations"), "metadata.annotations")
    return namespace, name, labels, annotations


def _located(kind: str, obj: Mapping[str, Any], err: PolicyInputError) -> PolicyInputError:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    return err.located(kind=kind, namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")))


def parse_namespace(obj: Mapping[str, Any]) -> Namespace:
    try:
        _, name, labels, annotations = _metadata(obj, namespaced=False)
    except PolicyInputError as err:
        raise _located("Namespace", obj, err) from None
    return Namespace(
        name=name,
        labels=frozenset(labels.items()),
        audit=is_audit_annotation(annotations.get(AUDIT_ANNOTATION)),
    )


def _protocol(value: Any, where: str) -> Protocol:
    if value is None:
        return Protocol.TCP
    proto = _PROTOCOLS.get(value) if isinstance(value, str) else None
    if proto is None:
        raise _fail(f"{where}: unknown protocol {value!r} (TCP, UDP or SCTP)")
    return proto


def _port_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _fail(f"{where}: port must be a number 1-65535, got {value!r}")
    return value


def _port_name(value: str, where: str) -> str:
    if len(value) > 15 or not _PORT_NAME.match(value):
        raise _fail(f"{where}: {value!r} is neither a port number nor a valid port name")
    return value


def parse_pod(obj: Mapping[str, Any]) -> Pod:
    try:
        return _parse_pod(obj)
    except PolicyInputError as err:
        raise _located("Pod", obj, err) from None


def _pod_addresses(status: Mapping[str, Any]) -> tuple[IPv4Address | None, IPv6Address | None]:
    """The first IPv4 and the first IPv6 address of status.podIP and status.podIPs (dual-stack pods
    list both families; an IPv6-only pod has no IPv4 address)."""
    texts = [status.get("podIP")]
    for at, entry in enumerate(_list(status.get("podIPs"), "status.podIPs")):
        texts.append(_mapping(entry, f"status.podIPs[{at}]").get("ip"))
    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None
    for text in texts:
        if not text:
            continue
        try:
            address = ip_address(str(text))
        except ValueError:
            raise _fail(f"status.podIP(s): {text!r} is not an IP address") from None
        if isinstance(address, IPv4Address):
            ipv4 = ipv4 or address
        else:
            ipv6 = ipv6 or address
    return ipv4, ipv6


def _parse_pod(obj: Mapping[str, Any]) -> Pod:
    namespace, name, labels, _ = _metadata(obj, namespaced=True)
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    ip, ipv6 = _pod_addresses(status)
    ports: list[ContainerPort] = []
    for ci, container in enumerate(_list(spec.get("containers"), "spec.containers")):
        container = _mapping(container, f"spec.containers[{ci}]")
        for pi, port in enumerate(_list(container.get("ports"), f"spec.containers[{ci}].ports")):
            at = f"spec.containers[{ci}].ports[{pi}]"
            port = _mapping(port, at)
            number = _port_number(port.get("containerPort"), f"{at}.containerPort")
            port_name = port.get("name")
            if port_name is None:
                continue  # unnamed ports never matter to a policy: numbers match directly
            if not isinstance(port_name, str):
                raise _fail(f"{at}.name: must be a string")
            ports.append(
                ContainerPort(
                    _port_name(port_name, f"{at}.name"), number, _protocol(port.get("protocol"), at)
                )
            )
    return Pod(
        namespace=namespace,
        name=name,
        labels=frozenset(labels.items()),
        ip=ip,
        node=str(spec.get("nodeName") or ""),
        ports=tuple(ports),
        host_network=bool(spec.get("hostNetwork", False)),
        ipv6=ipv6,
    )


def _network(value: Any, where: str) -> IPNetwork:
    """A CIDR of either family; PolicyInputError for garbage."""
    if not isinstance(value, str):
        raise _fail(f"{where}: expected a CIDR string, got {value!r}")
    try:
        net = ip_network(value, strict=False)
    except (ValueError, NetmaskValueError):
        raise _fail(f"{where}: {value!r} is not a valid CIDR") from None
    if "/" not in value:
        raise _fail(f"{where}: {value!r} is not a CIDR (no prefix length)")
    return net


def _ip_block(value: Any, where: str) -> IPBlock:
    obj = _mapping(value, where)
    cidr = _network(obj.get("cidr"), f"{where}.cidr")
    excepts: list[IPNetwork] = []
    for i, raw in enumerate(_list(obj.get("except"), f"{where}.except")):
        exc = _network(raw, f"{where}.except[{i}]")
        if exc.version != cidr.version:
            raise _fail(f"{where}.except[{i}]: {raw!r} is not the address family of the cidr")
        if not exc.subnet_of(cidr):  # type: ignore[arg-type]
            raise _fail(f"{where}.except[{i}]: {exc} is outside the cidr {cidr}")
        excepts.append(exc)
    return IPBlock(cidr, tuple(excepts))


def _peer(value: Any, where: str) -> PolicyPeer | None:
    obj = _mapping(value, where, required=True)
    unknown = set(obj) - {"podSelector", "namespaceSelector", "ipBlock"}
    if unknown:
        raise _fail(f"{where}: unknown peer fields {sorted(unknown)}")
    if "ipBlock" in obj:
        if "podSelector" in obj or "namespaceSelector" in obj:
            raise _fail(f"{where}: ipBlock cannot be combined with a selector")
        return PolicyPeer(ip_block=_ip_block(obj["ipBlock"], f"{where}.ipBlock"))
    if "podSelector" not in obj and "namespaceSelector" not in obj:
        raise _fail(f"{where}: a peer needs podSelector, namespaceSelector or ipBlock")
    return PolicyPeer(
        pod_selector=parse_selector(obj["podSelector"], f"{where}.podSelector")
        if "podSelector" in obj
        else None,
        namespace_selector=(
            parse_selector(obj["namespaceSelector"], f"{where}.namespaceSelector")
            if "namespaceSelector" in obj
            else None
        ),
    )


def _policy_port(value: Any, where: str) -> PolicyPort:
    obj = _mapping(value, where, required=True)
    protocol = _protocol(obj.get("protocol"), f"{where}.protocol")
    port = obj.get("port")
    end_port = obj.get("endPort")
    if port is None:
        if end_port is not None:
            raise _fail(f"{where}.endPort: needs a numeric port")
        return PolicyPort(protocol=protocol)
    if isinstance(port, str):
        if end_port is not None:
            raise _fail(f"{where}.endPort: not allowed with a named port")
        return PolicyPort(protocol=protocol, name=_port_name(port, f"{where}.port"))
    number = _port_number(port, f"{where}.port")
    if end_port is None:
        return PolicyPort(protocol=protocol, port=number)
    end = _port_number(end_port, f"{where}.endPort")
    if end < number:
        raise _fail(f"{where}.endPort: {end} is below port {number}")
    return PolicyPort(protocol=protocol, port=number, end_port=end)


def _rule(value: Any, where: str, peers_key: str) -> PolicyRule:
    obj = _mapping(value, where)
    raw_peers = _list(obj.get(peers_key), f"{where}.{peers_key}")
    ports = tuple(
        _policy_port(p, f"{where}.ports[{i}]")
        for i, p in enumerate(_list(obj.get("ports"), f"{where}.ports"))
    )
    if not raw_peers:
        return PolicyRule(peers=None, ports=ports)
    peers = [_peer(p, f"{where}.{peers_key}[{i}]") for i, p in enumerate(raw_peers)]
    # Dropped IPv6 peers leave a rule that may match nothing: keep it as an empty tuple, never as "all".
    return PolicyRule(peers=tuple(p for p in peers if p is not None), ports=ports)


def parse_network_policy(obj: Mapping[str, Any]) -> NetworkPolicy:
    try:
        return _parse_network_policy(obj)
    except PolicyInputError as err:
        raise _located("NetworkPolicy", obj, err) from None


def _parse_network_policy(obj: Mapping[str, Any]) -> NetworkPolicy:
    namespace, name, _, annotations = _metadata(obj, namespaced=True)
    spec = _mapping(obj.get("spec"), "spec", required=True)
    pod_selector = parse_selector(spec.get("podSelector"), "spec.podSelector")
    ingress = tuple(
        _rule(r, f"spec.ingress[{i}]", "from")
        for i, r in enumerate(_list(spec.get("ingress"), "spec.ingress"))
    )
    egress = tuple(
        _rule(r, f"spec.egress[{i}]", "to") for i, r in enumerate(_list(spec.get("egress"), "spec.egress"))
    )
    raw_types = spec.get("policyTypes")
    if raw_types is None or raw_types == []:
        # What the API server defaults: Ingress always, Egress only with a non-empty egress list.
        types = {PolicyType.INGRESS}
        if egress:
            types.add(PolicyType.EGRESS)
    else:
        types = set()
        for i, raw in enumerate(_list(raw_types, "spec.policyTypes")):
            try:
                types.add(PolicyType(raw))
            except ValueError:
                raise _fail(f"spec.policyTypes[{i}]: {raw!r} is not Ingress or Egress") from None
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        policy_types=frozenset(types),
        ingress=ingress,
        egress=egress,
        audit=is_audit_annotation(annotations.get(AUDIT_ANNOTATION)),
    )


def _admin_selector(value: Any, where: str, *, allow_networks: bool) -> AdminSelector:
    obj = _mapping(value, where, required=True)
    keys = set(obj)
    allowed = {"namespaces", "pods"} | ({"networks", "nodes"} if allow_networks else set())
    if len(keys) != 1 or not keys <= allowed:
        raise _fail(f"{where}: exactly one of {sorted(allowed)} is required, got {sorted(keys)}")
    if "nodes" in keys:
        raise _fail(f"{where}.nodes: node peers are not supported")
    if "namespaces" in keys:
        return AdminSelector(parse_selector(obj["namespaces"], f"{where}.namespaces"))
    if "networks" in keys:
        nets = []
        for i, raw in enumerate(_list(obj["networks"], f"{where}.networks")):
            nets.append(_network(raw, f"{where}.networks[{i}]"))
        if not nets and not obj["networks"]:
            raise _fail(f"{where}.networks: needs at least one CIDR")
        return AdminSelector(LabelSelector(), networks=tuple(nets))
    pods = _mapping(obj["pods"], f"{where}.pods", required=True)
    return AdminSelector(
        parse_selector(pods.get("namespaceSelector"), f"{where}.pods.namespaceSelector"),
        parse_selector(pods.get("podSelector"), f"{where}.pods.podSelector"),
    )


def _admin_port(value: Any, where: str) -> AdminPort:
    obj = _mapping(value, where, required=True)
    if len(obj) != 1:
        raise _fail(f"{where}: exactly one of portNumber, portRange, namedPort is required")
    if "namedPort" in obj:
        name = obj["namedPort"]
        if not isinstance(name, str):
            raise _fail(f"{where}.namedPort: must be a string")
        # A named admin port matches the container port of that name whatever its protocol.
        return AdminPort(protocol=Protocol.ANY, name=_port_name(name, f"{where}.namedPort"))
    if "portNumber" in obj:
        num = _mapping(obj["portNumber"], f"{where}.portNumber", required=True)
        port = _port_number(num.get("port"), f"{where}.portNumber.port")
        return AdminPort(_protocol(num.get("protocol"), f"{where}.portNumber.protocol"), port, port)
    if "portRange" in obj:
        rng = _mapping(obj["portRange"], f"{where}.portRange", required=True)
        start = _port_number(rng.get("start"), f"{where}.portRange.start")
        end = _port_number(rng.get("end"), f"{where}.portRange.end")
        if end < start:
            raise _fail(f"{where}.portRange.end: {end} is below start {start}")
        return AdminPort(_protocol(rng.get("protocol"), f"{where}.portRange.protocol"), start, end)
    raise _fail(f"{where}: unknown port kind {sorted(obj)}")


def _admin_rule(value: Any, where: str, peers_key: str, *, egress: bool) -> AdminRule:
    obj = _mapping(value, where, required=True)
    try:
        action = AdminAction(str(obj.get("action")))
    except ValueError:
        raise _fail(f"{where}.action: {obj.get('action')!r} is not Allow, Deny or Pass") from None
    raw_peers = _list(obj.get(peers_key), f"{where}.{peers_key}")
    if not raw_peers:
        raise _fail(f"{where}.{peers_key}: at least one peer is required")
    peers = tuple(
        _admin_selector(p, f"{where}.{peers_key}[{i}]", allow_networks=egress)
        for i, p in enumerate(raw_peers)
    )
    ports = tuple(
        _admin_port(p, f"{where}.ports[{i}]") for i, p in enumerate(_list(obj.get("ports"), f"{where}.ports"))
    )
    name = obj.get("name", "")
    return AdminRule(name=str(name), action=action, peers=peers, ports=ports)


def parse_admin_network_policy(obj: Mapping[str, Any]) -> AdminNetworkPolicy:
    try:
        return _parse_admin(obj)
    except PolicyInputError as err:
        raise _located("AdminNetworkPolicy", obj, err) from None


def _parse_admin(obj: Mapping[str, Any]) -> AdminNetworkPolicy:
    _, name, _, annotations = _metadata(obj, namespaced=False)
    spec = _mapping(obj.get("spec"), "spec", required=True)
    priority = spec.get("priority")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_ADMIN_PRIORITY:
        raise _fail(f"spec.priority: required number 0-{MAX_ADMIN_PRIORITY}, got {priority!r}")
    subject = _admin_selector(spec.get("subject"), "spec.subject", allow_networks=False)
    ingress = tuple(
        _admin_rule(r, f"spec.ingress[{i}]", "from", egress=False)
        for i, r in enumerate(_list(spec.get("ingress"), "spec.ingress"))
    )
    egress = tuple(
        _admin_rule(r, f"spec.egress[{i}]", "to", egress=True)
        for i, r in enumerate(_list(spec.get("egress"), "spec.egress"))
    )
    for rules, label in ((ingress, "ingress"), (egress, "egress")):
        if len(rules) > 100:
            raise _fail(f"spec.{label}: at most 100 rules")
    return AdminNetworkPolicy(
        name=name,
        priority=priority,
        subject=subject,
        ingress=ingress,
        egress=egress,
        audit=is_audit_annotation(annotations.get(AUDIT_ANNOTATION)),
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any]], PolicyObject]] = {
    "Namespace": parse_namespace,
    "Pod": parse_pod,
    "NetworkPolicy": parse_network_policy,
    "AdminNetworkPolicy": parse_admin_network_policy,
}


def parse_object(obj: Mapping[str, Any]) -> PolicyObject | None:
    """The model of a policy-relevant object; None for kinds the policy engine does not read."""
    if not isinstance(obj, Mapping):
        raise PolicyInputError(f"expected an object, got {type(obj).__name__}")
    kind = obj.get("kind")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        return None
    return parser(obj)
