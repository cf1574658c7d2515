"""A flow as one row of the live flows table (and of an edge panel's recent flows)."""

from __future__ import annotations

from typing import Any

from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.ui.flowfacts import drop_reason_name, node_of, policy_uses, protocol_of, verdict_name


def _endpoint_text(ip: str, port: int, node: str) -> str:
    if port and ":" in ip:
        return f"{node} ([{ip}]:{port})"  # IPv6: brackets keep its colons apart from the port's
    return f"{node} ({ip}:{port})" if port else f"{node} ({ip})"


def flow_row(
    f: pb.Flow, *, seq: int, source: str, target: str, ends: tuple[str, str] | None = None
) -> dict[str, Any]:
    """A flow as one row of the flows table (and of an edge panel's recent flows); `ends` are the map
    nodes of its source and destination as the graph resolved them (what the flow alone says otherwise)."""
    protocol, sport, dport = protocol_of(f)
    if ends is None:
        ends = (node_of(f.source, f.IP.source).id, node_of(f.destination, f.IP.destination).id)
    src_node, dst_node = ends
    policies = sorted({u.describe() + f" ({u.role}, {u.direction})" for u in policy_uses(f)})
    return {
        "seq": seq,
        "time": f.time.seconds + f.time.nanos / 1e9,
        "source": source,  # the edge's ends (a reply is filed under its request's edge)
        "target": target,
        "from": _endpoint_text(f.IP.source, sport, src_node),
        "to": _endpoint_text(f.IP.destination, dport, dst_node),
        "protocol": protocol,
        "verdict": verdict_name(f.verdict),
        "drop_reason": drop_reason_name(f) if f.verdict == pb.DROPPED else "",
        "direction": pb.TrafficDirection.Name(f.traffic_direction).lower(),
        "reply": f.is_reply.value,
        "summary": f.Summary,
        "policies": policies,
    }
