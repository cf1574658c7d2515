"""What the service map reads out of one flow: the map node of each end, the protocol and ports, the
verdict's name, and the policies the flow names with the role each played."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshagent.observer.proto.flow import flow_pb2 as pb

VERDICTS = ("forwarded", "dropped", "audit", "other")
VERDICT_INDEX: dict[int, int] = {pb.FORWARDED: 0, pb.DROPPED: 1, pb.AUDIT: 2}

# Hubble's reserved identities that are shown as nodes of their own, outside any namespace.
RESERVED_NODES = ("host", "remote-node", "kube-apiserver", "health", "ingress", "init", "unmanaged", "world")


@dataclass(frozen=True)
class NodeRef:
    id: str
    label: str
    namespace: str  # "" for world, the cluster's nodes and the other reserved nodes
    kind: str  # "workload", "pod", "node" (a cluster node by name) or a reserved name ("world", "host")


@dataclass(frozen=True)
class PolicyUse:
    """One policy named by flows of an edge, in the role it played."""

    role: str  # "allowed", "denied" or "audited"
    direction: str  # "ingress" or "egress": which end enforced it
    kind: str
    namespace: str
    name: str

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"


def cluster_node(name: str) -> NodeRef:
    """A node of the cluster by name: the `host` of the flows its own agent saw, and the address other
    nodes' agents saw as outside their pods ("node:" cannot start a namespace's name)."""
    return NodeRef(f"node:{name}", f"node {name}", "", "node")


def host_label(ep: pb.Endpoint) -> bool:
    return "reserved:host" in ep.labels


def node_of(
    ep: pb.Endpoint, ip: str, *, node_name: str = "", node_addresses: Mapping[str, str] | None = None
) -> NodeRef:
    """The map node of a flow endpoint: its workload (or pod) within its namespace; else the cluster node
    it is, by name: the host of the node that saw the flow (`node_name`), or an address known to belong to
    a node (`node_addresses`: a remote node, which an agent labels as the world); else the reserved
    identity it carries (world, host, remote-node, ...). An address nothing is known about is the world."""
    if ep.namespace:
        if ep.workloads:
            name = ep.workloads[0].name
            return NodeRef(f"{ep.namespace}/{name}", name, ep.namespace, "workload")
        if ep.pod_name:
            return NodeRef(f"{ep.namespace}/{ep.pod_name}", ep.pod_name, ep.namespace, "pod")
    if node_name and host_label(ep):
        return cluster_node(node_name)
    if node_addresses:
        known = node_addresses.get(ip)
        if known:
            return cluster_node(known)
    for label in ep.labels:
        if label.startswith("reserved:"):
            name = label.partition(":")[2]
            if name in RESERVED_NODES:
                return NodeRef(name, name, "", name)
    return NodeRef("world", "world", "", "world")


def protocol_of(f: pb.Flow) -> tuple[str, int, int]:
    """(protocol name, source port, destination port) of a flow."""
    l4 = f.l4
    which = l4.WhichOneof("protocol")
    if which == "TCP":
        return "TCP", l4.TCP.source_port, l4.TCP.destination_port
    if which == "UDP":
        return "UDP", l4.UDP.source_port, l4.UDP.destination_port
    if which == "SCTP":
        return "SCTP", l4.SCTP.source_port, l4.SCTP.destination_port
    if which == "ICMPv4":
        return "ICMP", 0, 0
    return (which or "IP").upper(), 0, 0


def verdict_name(verdict: int) -> str:
    return VERDICTS[VERDICT_INDEX.get(verdict, 3)]


def policy_uses(f: pb.Flow) -> list[PolicyUse]:
    """The policies a flow names, each with the role it played: a forwarded flow's allowers, a dropped
    flow's deniers (for a default deny, the policies that isolate the endpoint) and an audited flow's
    would-be deniers."""
    denied_role = "audited" if f.verdict == pb.AUDIT else "denied"
    uses: list[PolicyUse] = []
    for direction, allowed, denied in (
        ("egress", f.egress_allowed_by, f.egress_denied_by),
        ("ingress", f.ingress_allowed_by, f.ingress_denied_by),
    ):
        for role, policies in (("allowed", allowed), (denied_role, denied)):
            for p in policies:
                uses.append(PolicyUse(role, direction, p.kind, p.namespace, p.name))
    return uses


def drop_reason_name(f: pb.Flow) -> str:
    try:
        return pb.DropReason.Name(f.drop_reason_desc)
    except ValueError:  # a number newer than our copy of the proto
        return str(int(f.drop_reason_desc))
