"""The objects of a set of manifests as policy models, and a compiler loaded with them: what `meshagent
policy list|trace` work on (the CLI reads the directory as the agent does)."""

from __future__ import annotations

from dataclasses import dataclass

from meshagent.model.admin_policy import AdminNetworkPolicy
from meshagent.model.cluster import LocalEndpoint, Namespace, Pod
from meshagent.model.netpol import NetworkPolicy
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.identity import IdentityAllocator, LabelFilter


@dataclass(frozen=True)
class ManifestSet:
    namespaces: tuple[Namespace, ...]
    pods: tuple[Pod, ...]
    network_policies: tuple[NetworkPolicy, ...]
    admin_policies: tuple[AdminNetworkPolicy, ...]
    errors: tuple[str, ...]  # what was rejected, and why (file and line where known)


def compile_manifests(
    manifests: ManifestSet, *, node: str | None = None, label_filter: LabelFilter | None = None
) -> PolicyCompiler:
    """A compiler loaded with the manifests. Local endpoints: the pods on `node` (every pod when None),
    numbered in name order (the datapath's real ids and ifindexes are not known offline)."""
    compiler = PolicyCompiler(label_filter=label_filter, identities=IdentityAllocator())
    local_pods = sorted(
        (
            p
            for p in manifests.pods
            if p.ip is not None and not p.host_network and (node is None or p.node == node)
        ),
        key=lambda p: p.key,
    )
    compiler.load(
        namespaces=manifests.namespaces,
        pods=manifests.pods,
        policies=(*manifests.network_policies, *manifests.admin_policies),
        local=[(p.key, LocalEndpoint(endpoint_id=i, ifindex=0)) for i, p in enumerate(local_pods, start=1)],
    )
    return compiler
