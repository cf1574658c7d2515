"""Text and JSON output of `meshagent policy trace` and `meshagent policy list` (no transport here)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

from meshagent.model.kernel_state import Direction
from meshagent.policy.evaluate import Peer
from meshagent.policy.inventory import EndpointSummary
from meshagent.policy.trace import DirectionTrace, Trace


def _peer(peer: Peer) -> str:
    return peer.describe()


def _direction_dict(d: DirectionTrace) -> dict[str, Any]:
    decision = d.decision
    return {
        "direction": decision.direction.name.lower(),
        "endpoint": f"{decision.endpoint.namespace}/{decision.endpoint.name}",
        "verdict": d.verdict.name,
        "reason": decision.reason,
        "deciding_rule": decision.deciding.describe() if decision.deciding else None,
        "isolated_by": list(decision.isolating),
        "compiled": None
        if d.compiled is None
        else {
            "verdict": d.compiled.verdict.name,
            "rule_id": d.compiled.rule_id,
            "rule": d.compiled_rule.describe() if d.compiled_rule else None,
            "peer_identity": d.compiled.peer_identity,
            "default": d.compiled.default,
        },
        "agrees": d.agrees,
        "rules": [c.as_dict() for c in decision.checks],
    }


def print_trace(out: TextIO, result: Trace, *, output: str = "text") -> None:
    if output == "json":
        json.dump(
            {
                "from": _peer(result.source),
                "to": _peer(result.destination),
                "protocol": result.protocol.name.lower(),
                "port": result.port,
                "verdict": result.verdict.name,
                "agrees": result.agrees,
                "directions": [_direction_dict(d) for d in result.directions],
            },
            out,
            indent=2,
        )
        out.write("\n")
        return
    proto = result.protocol.name.lower()
    what = f"{_peer(result.source)} -> {_peer(result.destination)} {proto}/{result.port}"
    out.write(f"{what}: {result.verdict.name}\n")
    for d in result.directions:
        decision = d.decision
        where = "egress from" if decision.direction is Direction.EGRESS else "ingress to"
        out.write(f"\n  {where} {decision.endpoint.namespace}/{decision.endpoint.name}: {d.verdict.name}\n")
        out.write(f"    why: {decision.reason}")
        out.write(f" ({decision.deciding.describe()})\n" if decision.deciding else "\n")
        if decision.isolating:
            out.write(f"    isolated by: {', '.join(decision.isolating)}\n")
        if d.compiled is None:
            out.write("    compiled: not a local endpoint (verdict from the policy semantics)\n")
        else:
            rule = d.compiled_rule.describe() if d.compiled_rule else "no rule (default)"
            out.write(
                f"    compiled: {d.compiled.verdict.name} by {rule}, rule id {d.compiled.rule_id}, "
                f"peer identity {d.compiled.peer_identity}\n"
            )
            if not d.agrees:
                out.write("    WARNING: the compiled state disagrees with the policy semantics\n")
        for check in decision.checks:
            mark = "match" if check.matched else "no match"
            audit = " [audit]" if check.audit else ""
            out.write(f"    - {check.ref.describe()} ({check.action}{audit}): {mark}: {check.why}\n")


def _flags(enforce: bool, audit: bool) -> str:
    if not enforce:
        return "open"
    return "audit" if audit else "isolated"


def print_list(
    out: TextIO, rows: Sequence[EndpointSummary], errors: Sequence[str], *, output: str = "text"
) -> None:
    if output == "json":
        json.dump(
            {
                "endpoints": [{**asdict(r), "ip": str(r.ip)} for r in rows],
                "rejected": [str(e) for e in errors],
            },
            out,
            indent=2,
        )
        out.write("\n")
        return
    for r in rows:
        out.write(
            f"{r.namespace}/{r.name}  ip={r.ip}  endpoint={r.endpoint_id}  identity={r.identity}\n"
            f"  ingress: {_flags(r.enforce_ingress, r.audit_ingress)}, {r.entries_ingress} entries;"
            f"  egress: {_flags(r.enforce_egress, r.audit_egress)}, {r.entries_egress} entries\n"
        )
        for name, types in r.network_policies:
            out.write(f"  NetworkPolicy {r.namespace}/{name} ({', '.join(types)})\n")
        for name, priority in r.admin_policies:
            out.write(f"  AdminNetworkPolicy {name} (priority {priority})\n")
        if not r.network_policies and not r.admin_policies:
            out.write("  no policy selects it\n")
    if not rows:
        out.write("no local endpoints\n")
    for error in errors:
        out.write(f"rejected: {error}\n")
