"""The Kubernetes kinds the agent watches, with where each lives in the API.

Both sources (the API server and a manifest directory) speak in these kinds, so
the rest of the agent never cares where an object came from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.StrEnum):
    NAMESPACE = "Namespace"
    POD = "Pod"
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    NETWORK_POLICY = "NetworkPolicy"
    ADMIN_NETWORK_POLICY = "AdminNetworkPolicy"
    NODE = "Node"
    TCP_ROUTE = "TCPRoute"
    UDP_ROUTE = "UDPRoute"


@dataclass(frozen=True)
class KindInfo:
    kind: Kind
    group: str  # "" for the core group (served under /api/v1)
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self, namespace: str | None = None) -> str:
        """URL path of the collection, across namespaces when `namespace` is None."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None and self.namespaced:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


KINDS: tuple[KindInfo, ...] = (
    KindInfo(Kind.NAMESPACE, "", "v1", "namespaces", namespaced=False),
    KindInfo(Kind.POD, "", "v1", "pods", namespaced=True),
    KindInfo(Kind.SERVICE, "", "v1", "services", namespaced=True),
    KindInfo(Kind.ENDPOINT_SLICE, "discovery.k8s.io", "v1", "endpointslices", namespaced=True),
    KindInfo(Kind.NETWORK_POLICY, "networking.k8s.io", "v1", "networkpolicies", namespaced=True),
    # The admin policy resource of the network-policy-api project (a CRD, cluster scoped).
    KindInfo(
        Kind.ADMIN_NETWORK_POLICY,
        "policy.networking.k8s.io",
        "v1alpha1",
        "adminnetworkpolicies",
        namespaced=False,
    ),
    KindInfo(Kind.NODE, "", "v1", "nodes", namespaced=False),
    # Gateway API routes carry the weights of canary and blue-green splits between a Service's backends
    # (CRDs; a cluster without them simply has none).
    KindInfo(Kind.TCP_ROUTE, "gateway.networking.k8s.io", "v1alpha2", "tcproutes", namespaced=True),
    KindInfo(Kind.UDP_ROUTE, "gateway.networking.k8s.io", "v1alpha2", "udproutes", namespaced=True),
)

KIND_INFO: dict[Kind, KindInfo] = {info.kind: info for info in KINDS}


def kind_info(kind: Kind | str) -> KindInfo:
    """The KindInfo of `kind`; raises KeyError naming the kind when it is not one we watch."""
    try:
        return KIND_INFO[Kind(kind)]
    except ValueError as err:
        raise KeyError(f"unknown kind {kind!r}") from err
