"""The service map's state: flows folded into workload nodes and (source, destination, port, protocol)
edges with counts by verdict, the policies that decided, and recent flows.

The server aggregates so that the browser never sees the raw flow rate: `ServiceGraph.add` is called per
flow, `drain` hands out what changed since the last call (a delta), `snapshot` everything (a new page).
Counts are also kept in time buckets, so that the browser can sum an edge over any time window itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.ui.flowfacts import (
    VERDICT_INDEX,
    NodeRef,
    PolicyUse,
    host_label,
    node_of,
    policy_uses,
    protocol_of,
)
from meshagent.ui.rows import flow_row

BUCKET_S = 10  # the time resolution of an edge's counts (the browser's time window sums these)
HISTORY_S = 3600  # buckets older than this are forgotten: the longest time window offered
RECENT_PER_EDGE = 20  # flows kept per edge for its panel
TABLE_ROWS = 200  # rows of the live flows table in a snapshot (the newest)
DELTA_ROWS = (
    30  # and in a delta: at thousands of flows a second nobody reads more, and each row costs the page
)


@dataclass
class Edge:
    id: str
    source: str
    target: str
    port: int
    protocol: str
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # by VERDICTS
    buckets: dict[int, list[int]] = field(default_factory=dict)  # bucket start (s) -> counts
    policies: dict[PolicyUse, int] = field(default_factory=dict)  # -> flows that named it
    recent: deque[pb.Flow] = field(default_factory=lambda: deque(maxlen=RECENT_PER_EDGE))
    first_seen: float = 0.0  # time of its first flow (how long a new edge takes to show is measured from it)
    last_seen: float = 0.0
    dirty_buckets: set[int] = field(default_factory=set)
    policies_changed: bool = True  # a policy new to this edge since the last delta

    def summary(self, *, all_buckets: bool, known: bool = False) -> dict[str, Any]:
        """The edge for the page. A delta (all_buckets False) carries only the buckets that changed, the
        policies only when one was added, and for an edge the page already has (`known`) neither its ends
        nor its port: at thousands of flows a second most edges change in every delta."""
        keys: Iterable[int] = self.buckets if all_buckets else self.dirty_buckets
        summary: dict[str, Any] = {
            "id": self.id,
            "counts": self.counts,  # by VERDICTS
            "buckets": {str(t): self.buckets[t] for t in keys if t in self.buckets},
            "last_seen": self.last_seen,
        }
        if not known:
            summary.update(
                source=self.source,
                target=self.target,
                port=self.port,
                protocol=self.protocol,
                first_seen=self.first_seen,
            )
        if all_buckets or self.policies_changed:
            summary["policies"] = sorted({f"{p.role}: {p.describe()}" for p in self.policies})
        return summary


class ServiceGraph:
    """Nodes and edges built from flows; not thread-safe (the server serialises access)."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeRef] = {}
        self.node_seen: dict[str, float] = {}
        self.edges: dict[str, Edge] = {}
        self.flows_seen = 0
        # (seq, flow, the edge's source and target, the flow's own source and destination)
        self._table: deque[tuple[int, pb.Flow, str, str, str, str]] = deque(maxlen=TABLE_ROWS)
        self._dirty_nodes: set[str] = set()
        self._dirty_edges: set[str] = set()
        self._new_edges: set[str] = set()  # since the last delta
        self._removed_edges: set[str] = set()
        self._removed_nodes: set[str] = set()
        self._new_rows = 0
        self._endpoint_cache: dict[tuple[str, str, str, int, str], NodeRef] = {}
        # address -> the cluster node holding it: learned from the flows (a node's agent labels its own
        # addresses `host`) and given by set_node_addresses (the Node objects), so that another node's
        # agent, which sees that address as the world, shows it as the node it is.
        self.node_addresses: dict[str, str] = {}
        self._given_node_addresses: dict[str, str] = {}

    def set_node_addresses(self, addresses: Mapping[str, str]) -> None:
        """The cluster's node addresses (address -> node name), e.g. from the Node objects."""
        if dict(addresses) == self._given_node_addresses:
            return
        self._given_node_addresses = dict(addresses)
        self.node_addresses.update(addresses)
        self._endpoint_cache.clear()

    def _node(self, ep: pb.Endpoint, ip: str, node_name: str) -> NodeRef:
        # Endpoint fields cost a message access each: most flows repeat a few (address, pod) pairs.
        key = (ip, ep.namespace, ep.pod_name, ep.identity, node_name)
        node = self._endpoint_cache.get(key)
        if node is None:
            if len(self._endpoint_cache) > 65536:
                self._endpoint_cache.clear()
            if node_name and not ep.namespace and host_label(ep) and ip not in self.node_addresses:
                self.node_addresses[ip] = node_name
                self._endpoint_cache.clear()  # the address may have been taken for the world before
            node = node_of(ep, ip, node_name=node_name, node_addresses=self.node_addresses)
            self._endpoint_cache[key] = node
        return node

    def ends(self, f: pb.Flow) -> tuple[NodeRef, NodeRef]:
        """The map nodes of a flow's source and destination (as sent, before a reply is turned round)."""
        return (
            self._node(f.source, f.IP.source, f.node_name),
            self._node(f.destination, f.IP.destination, f.node_name),
        )

    def end_ids(self, f: pb.Flow) -> tuple[str, str]:
        src, dst = self.ends(f)
        return src.id, dst.id

    def add(self, f: pb.Flow) -> None:
        self.flows_seen += 1
        node_name = f.node_name
        src = self._node(f.source, f.IP.source, node_name)
        dst = self._node(f.destination, f.IP.destination, node_name)
        from_id, to_id = src.id, dst.id
        protocol, sport, dport = protocol_of(f)
        port = dport
        if f.is_reply.value:
            # A reply belongs to the connection its request opened: the edge points from the client.
            src, dst, port = dst, src, sport
        now = f.time.seconds + f.time.nanos / 1e9
        for node in (src, dst):
            if node.id not in self.nodes:
                self.nodes[node.id] = node
            self.node_seen[node.id] = now
            self._dirty_nodes.add(node.id)
        edge_id = f"{src.id}>{dst.id}:{port}/{protocol}"
        edge = self.edges.get(edge_id)
        if edge is None:
            edge = self.edges[edge_id] = Edge(edge_id, src.id, dst.id, port, protocol, first_seen=now)
            self._new_edges.add(edge_id)
        index = VERDICT_INDEX.get(f.verdict, 3)
        edge.counts[index] += 1
        bucket_start = int(now) // BUCKET_S * BUCKET_S
        bucket = edge.buckets.get(bucket_start)
        if bucket is None:
            bucket = edge.buckets[bucket_start] = [0, 0, 0, 0]
            for old in [t for t in edge.buckets if t < bucket_start - HISTORY_S]:
                del edge.buckets[old]
        bucket[index] += 1
        edge.dirty_buckets.add(bucket_start)
        if f.egress_allowed_by or f.ingress_allowed_by or f.egress_denied_by or f.ingress_denied_by:
            for use in policy_uses(f):
                count = edge.policies.get(use, 0)
                if not count:
                    edge.policies_changed = True
                edge.policies[use] = count + 1
        edge.recent.append(f)
        edge.last_seen = max(edge.last_seen, now)
        self._dirty_edges.add(edge_id)
        self._table.append((self.flows_seen, f, src.id, dst.id, from_id, to_id))
        self._new_rows += 1

    def add_many(self, flows: Iterable[pb.Flow]) -> None:
        for f in flows:
            self.add(f)

    def _node_dict(self, node_id: str) -> dict[str, Any]:
        n = self.nodes[node_id]
        return {
            "id": n.id,
            "label": n.label,
            "namespace": n.namespace,
            "kind": n.kind,
            "last_seen": self.node_seen.get(node_id, 0.0),
        }

    def _rows(self, count: int) -> list[dict[str, Any]]:
        rows = list(self._table)[-count:] if count else []
        return [flow_row(f, seq=seq, source=s, target=t, ends=(a, b)) for seq, f, s, t, a, b in rows]

    def forget_older_than(self, cutoff: float) -> None:
        """Drops edges with no flow since `cutoff` (wall time), and nodes left without an edge: the map
        holds at most the longest time window, so its memory follows the live cluster, not its history.
        The next delta names what went."""
        for edge_id in [e for e, edge in self.edges.items() if edge.last_seen < cutoff]:
            del self.edges[edge_id]
            self._removed_edges.add(edge_id)
            self._dirty_edges.discard(edge_id)
            self._new_edges.discard(edge_id)
        linked = {end for edge in self.edges.values() for end in (edge.source, edge.target)}
        for node_id in [n for n in self.nodes if n not in linked]:
            del self.nodes[node_id]
            self.node_seen.pop(node_id, None)
            self._removed_nodes.add(node_id)
            self._dirty_nodes.discard(node_id)
        if self._removed_nodes:
            self._endpoint_cache.clear()  # it may name a forgotten node

    def drain(self) -> dict[str, Any] | None:
        """What changed since the last drain (None: nothing); the edges' changed buckets only."""
        if not (self._dirty_edges or self._dirty_nodes or self._removed_edges or self._removed_nodes):
            return None
        delta = {
            "nodes": [self._node_dict(n) for n in sorted(self._dirty_nodes)],
            "edges": [
                self.edges[e].summary(all_buckets=False, known=e not in self._new_edges)
                for e in sorted(self._dirty_edges)
            ],
            "flows": self._rows(min(self._new_rows, DELTA_ROWS)),
            "flows_seen": self.flows_seen,
            "removed_edges": sorted(self._removed_edges),
            "removed_nodes": sorted(self._removed_nodes),
        }
        self._removed_edges.clear()
        self._removed_nodes.clear()
        for e in self._dirty_edges:
            self.edges[e].dirty_buckets.clear()
            self.edges[e].policies_changed = False
        self._dirty_nodes.clear()
        self._dirty_edges.clear()
        self._new_edges.clear()
        self._new_rows = 0
        return delta

    def snapshot(self) -> dict[str, Any]:
        """Everything, for a page that (re)connects."""
        return {
            "nodes": [self._node_dict(n) for n in sorted(self.nodes)],
            "edges": [e.summary(all_buckets=True) for _, e in sorted(self.edges.items())],
            "flows": self._rows(TABLE_ROWS),
            "flows_seen": self.flows_seen,
        }
