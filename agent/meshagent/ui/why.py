"""The "why" of an edge in the service map.

Two sources, and the panel says which one spoke:
- the flows themselves (always): each flow names the policies that allowed or denied it, and for a default
  deny the policies that isolate the endpoint; with the drop reason that says which of the two it was;
- the policy trace (`meshagent policy trace`), when the UI server was given the desired state as a
  manifest directory (`--manifests`): the full evaluation, rule by rule, for the edge's last addresses.
  The UI server cannot reach the agent's compiled state, so without manifests there is no trace.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import AddressValueError
from typing import Any

from meshagent.model.kernel_state import Direction, Protocol
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.policy.manifests import ManifestSet, compile_manifests
from meshagent.policy.trace import DirectionTrace, TraceError, resolve_ip, trace
from meshagent.ui.flowfacts import PolicyUse, drop_reason_name
from meshagent.ui.graph import Edge

ManifestLoader = Callable[[], ManifestSet]
_PROTOCOLS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}


def _drop_explanation(reason: str) -> str:
    if reason == "POLICY_DENIED":
        return "default deny: the endpoint is isolated and no rule allowed it"
    if reason == "POLICY_DENY":
        return "an explicit deny rule matched"
    return f"dropped by the datapath ({reason})"


def from_flows(edge: Edge) -> list[str]:
    """Sentences about the edge from what its flows carry (newest flow last)."""
    lines: list[str] = []
    by_role: dict[str, list[PolicyUse]] = {}
    for use in sorted(edge.policies, key=lambda u: (u.role, u.direction, u.describe())):
        by_role.setdefault(use.role, []).append(use)
    for role, uses in sorted(by_role.items()):
        named = ", ".join(f"{u.describe()} at {u.direction}" for u in uses)
        lines.append(f"{role} by {named}")
    drops = sorted({drop_reason_name(f) for f in edge.recent if f.verdict == pb.DROPPED})
    for reason in drops:
        lines.append(_drop_explanation(reason))
    if any(f.verdict == pb.AUDIT for f in edge.recent):
        lines.append("audited: a policy in audit mode would have dropped it; it was let through and reported")
    if not lines:
        lines.append("no policy named: nothing isolates either end for this traffic (allowed by default)")
    return lines


def _direction(d: DirectionTrace) -> dict[str, Any]:
    decision = d.decision
    return {
        "direction": "egress from" if decision.direction is Direction.EGRESS else "ingress to",
        "endpoint": f"{decision.endpoint.namespace}/{decision.endpoint.name}",
        "verdict": d.verdict.name,
        "reason": decision.reason,
        "deciding_rule": decision.deciding.describe() if decision.deciding else None,
        "isolated_by": list(decision.isolating),
        "rules": [c.as_dict() for c in decision.checks],
    }


class Tracer:
    """Runs the policy trace for an edge from a manifest directory, read afresh each time (so edits to it
    show without a restart; a panel is opened by a person, not per flow)."""

    def __init__(self, load: ManifestLoader) -> None:
        self._load = load

    def explain(self, last: pb.Flow | None, port: int, protocol_name: str) -> dict[str, Any]:
        """The trace for an edge's port and protocol between the addresses of its last flow."""
        if last is None:
            return {"error": "no flow of this edge is held"}
        protocol = _PROTOCOLS.get(protocol_name)
        if protocol is None or not port:
            return {"error": f"policy trace covers TCP, UDP and SCTP ports, not {protocol_name}"}
        src_ip, dst_ip = last.IP.source, last.IP.destination
        if last.is_reply.value:
            src_ip, dst_ip = dst_ip, src_ip
        try:
            compiler = compile_manifests(self._load(), node=None)
            result = trace(
                compiler,
                source=resolve_ip(compiler, src_ip),
                destination=resolve_ip(compiler, dst_ip),
                protocol=protocol,
                port=port,
            )
        except (TraceError, AddressValueError, OSError) as err:
            return {"error": str(err)}
        return {
            "from": result.source.describe(),
            "to": result.destination.describe(),
            "verdict": result.verdict.name,
            "agrees": result.agrees,
            "directions": [_direction(d) for d in result.directions],
        }
