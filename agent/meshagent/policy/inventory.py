"""`policy list`: what selects each local endpoint, and what that compiled to."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from meshagent.model.kernel_state import Direction
from meshagent.policy.compiler import PolicyCompiler


@dataclass(frozen=True)
class EndpointSummary:
    namespace: str
    name: str
    ip: IPv4Address | IPv6Address  # IPv6 for a pod that has no IPv4 address
    endpoint_id: int
    identity: int
    enforce_ingress: bool
    enforce_egress: bool
    audit_ingress: bool
    audit_egress: bool
    network_policies: tuple[tuple[str, tuple[str, ...]], ...]  # (name, policyTypes)
    admin_policies: tuple[tuple[str, int], ...]  # (name, priority), in evaluation order
    entries_ingress: int
    entries_egress: int


def summarize(compiler: PolicyCompiler) -> list[EndpointSummary]:
    state = compiler.state()
    counts = Counter((e.endpoint_id, e.direction) for e in state.policy)
    rows = []
    for key in sorted(compiler.local_endpoints):
        endpoint = compiler.endpoint(key)
        pod = compiler.pod(key)
        if endpoint is None or pod is None:
            continue  # not compiled yet (no pod or no address): nothing in the kernel for it
        nps, admins = compiler.selecting_policies(pod)
        rows.append(
            EndpointSummary(
                namespace=key[0],
                name=key[1],
                ip=pod.ip or pod.ipv6 or endpoint.ipv4,
                endpoint_id=endpoint.endpoint_id,
                identity=endpoint.identity,
                enforce_ingress=endpoint.enforce_ingress,
                enforce_egress=endpoint.enforce_egress,
                audit_ingress=endpoint.audit_ingress,
                audit_egress=endpoint.audit_egress,
                network_policies=tuple(
                    (np.name, tuple(sorted(t.value for t in np.policy_types))) for np in nps
                ),
                admin_policies=tuple((a.name, a.priority) for a in admins),
                entries_ingress=counts[(endpoint.endpoint_id, Direction.INGRESS)],
                entries_egress=counts[(endpoint.endpoint_id, Direction.EGRESS)],
            )
        )
    return rows
