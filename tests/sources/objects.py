"""Sample objects of every watched kind, in the API's JSON shape (camelCase)."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def namespace(name: str, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels)}}


def pod(
    name: str, ns: str = "default", *, node: str = "node-1", ip: str | None = "10.1.0.5", **labels: str
) -> Obj:
    status: Obj = {"phase": "Running"}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                }
            ],
        },
        "status": status,
    }


def service(name: str, ns: str = "default", *, port: int = 80) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": "10.96.0.10",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


def endpoint_slice(name: str, ns: str = "default", *, ip: str = "10.1.0.5") -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-1"}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def network_policy(name: str, ns: str = "default", *, port: int = 8080) -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": port}]}],
        },
    }


def admin_network_policy(name: str, *, priority: int = 10) -> Obj:
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "priority": priority,
            "subject": {"namespaces": {}},
            "ingress": [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}],
        },
    }


def node(name: str, *, ip: str = "192.0.2.10") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]
        },
    }


def tcp_route(name: str, ns: str = "default", *, service: str = "svc") -> Obj:
    """A Gateway API TCPRoute splitting a Service between two backend Services by weight."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1alpha2",
        "kind": "TCPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": service, "port": 80}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": f"{service}-blue", "port": 80, "weight": 90},
                        {"name": f"{service}-green", "port": 80, "weight": 10},
                    ]
                }
            ],
        },
    }


def udp_route(name: str, ns: str = "default", *, service: str = "dns") -> Obj:
    route = tcp_route(name, ns, service=service)
    route["kind"] = "UDPRoute"
    return route


def one_of_each() -> list[Obj]:
    return [
        namespace("web", team="a"),
        pod("p1", "web", app="web"),
        service("svc", "web"),
        endpoint_slice("svc-abc", "web"),
        network_policy("np", "web"),
        admin_network_policy("anp"),
        node("node-1"),
        tcp_route("split", "web"),
        udp_route("dns-split", "web"),
    ]


# (kind, builder of version 1, how version 2 differs: a camelCase field path that must survive)
SAMPLES: dict[str, Obj] = {o["kind"]: o for o in one_of_each()}
