"""The service map's aggregation: nodes, edges, verdict counts, policies by role, deltas."""

from __future__ import annotations

from meshagent.model.events import DropReason, EventType
from meshagent.model.kernel_state import IDENTITY_HOST, Direction, Verdict
from meshagent.observer.convert import FlowBuilder
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.ui.flowfacts import node_of
from meshagent.ui.graph import BUCKET_S, ServiceGraph

from tests.observer import helpers as h


def _flows(events: list) -> list[pb.Flow]:
    builder = FlowBuilder(enricher=h.enricher(), node_name="node-a")
    return [builder.build(ev) for ev in events]


def _graph() -> ServiceGraph:
    graph = ServiceGraph()
    graph.add_many(_flows(h.sample_events()))
    return graph


def test_nodes_are_workloads_by_namespace_and_reserved_identities() -> None:
    graph = _graph()
    assert {n.id: (n.namespace, n.kind) for n in graph.nodes.values()} == {
        "shop/client": ("shop", "workload"),
        "shop/server": ("shop", "workload"),
        "data/db": ("data", "workload"),
        "world": ("", "world"),
    }


def test_host_and_unknown_addresses_become_their_own_nodes() -> None:
    ep = pb.Endpoint(labels=["reserved:host"])
    assert node_of(ep, "10.0.0.1").id == "host"
    assert node_of(pb.Endpoint(labels=["reserved:remote-node"]), "10.0.9.1").id == "remote-node"
    assert node_of(pb.Endpoint(), "192.0.2.1").id == "world"
    pod_only = pb.Endpoint(namespace="ns1", pod_name="lonely")
    assert node_of(pod_only, "10.0.0.2").id == "ns1/lonely"
    (flow,) = _flows(
        [h.event(saddr=h.WORLD_IP, src_identity=IDENTITY_HOST, direction=Direction.INGRESS, rule_id=0)]
    )
    graph = ServiceGraph()
    graph.add(flow)
    # The flow names the node that saw it: its host is that node, by name.
    assert graph.nodes["node:node-a"].kind == "node"
    flow.node_name = ""  # a flow source that does not name its node: the host, whose ever it is
    anonymous = ServiceGraph()
    anonymous.add(flow)
    assert anonymous.nodes["host"].kind == "host"


def test_a_remote_nodes_address_is_that_node_not_the_world() -> None:
    """Node B's agent labels node A's address as the world (remote nodes have no identity); once the map
    knows the address is A's (A's agent called it host, or the Node objects say so), it is node A."""
    (from_a_host,) = _flows(
        [h.event(saddr=h.WORLD_IP, src_identity=IDENTITY_HOST, direction=Direction.INGRESS, rule_id=0)]
    )
    (world_at_b,) = _flows([e for e in h.sample_events() if e.dport == 22])  # world -> shop/server, drop
    world_at_b.node_name = "node-b"
    assert world_at_b.source.labels == ["reserved:world"]
    graph = ServiceGraph()
    graph.add(world_at_b)
    assert "world>shop/server:22/TCP" in graph.edges  # nothing says whose address it is yet
    graph.add(from_a_host)
    graph.add(world_at_b)
    assert graph.node_addresses == {str(h.WORLD_IP): "node-a"}
    assert graph.edges["node:node-a>shop/server:22/TCP"].counts == [0, 1, 0, 0]
    assert graph.nodes["node:node-a"].label == "node node-a"

    given = ServiceGraph()
    given.set_node_addresses({str(h.WORLD_IP): "node-c"})
    given.add(world_at_b)
    assert list(given.edges) == ["node:node-c>shop/server:22/TCP"]
    row = given.drain()["flows"][0]  # type: ignore[index]
    assert row["from"].startswith("node:node-c (")


def test_edges_count_by_verdict_and_replies_join_their_request() -> None:
    edges = _graph().edges
    web = edges["shop/client>shop/server:80/TCP"]
    # egress + ingress verdicts of the request, and the reply (a trace, forwarded) filed under it
    assert web.counts == [3, 0, 0, 0]
    db = edges["shop/client>data/db:5432/TCP"]
    assert db.counts == [0, 1, 1, 0]  # one drop, one audit
    ssh = edges["world>shop/server:22/TCP"]
    assert ssh.counts == [0, 1, 0, 0]
    assert "shop/client>world:0/ICMP" in edges
    assert "shop/client>shop/server:3868/SCTP" in edges


def test_policies_by_role_and_direction() -> None:
    edges = _graph().edges
    web = {(u.role, u.direction, u.describe()) for u in edges["shop/client>shop/server:80/TCP"].policies}
    assert web == {
        ("allowed", "egress", "NetworkPolicy shop/allow-web"),
        ("allowed", "ingress", "NetworkPolicy shop/allow-web"),
    }
    db = {(u.role, u.describe()) for u in edges["shop/client>data/db:5432/TCP"].policies}
    assert db == {("denied", "AdminNetworkPolicy deny-db"), ("audited", "AdminNetworkPolicy deny-db")}


def test_drain_hands_out_changes_once_and_snapshot_everything() -> None:
    graph = _graph()
    delta = graph.drain()
    assert delta is not None
    assert {e["id"] for e in delta["edges"]} == set(graph.edges)
    assert len(delta["flows"]) == len(h.sample_events())
    assert graph.drain() is None
    (drop,) = _flows(
        [
            h.event(
                type=EventType.DROP,
                verdict=Verdict.DENIED,
                drop=DropReason.POLICY_DEFAULT_DENY,
                direction=Direction.INGRESS,
                dport=9090,
            )
        ]
    )
    graph.add(drop)
    delta = graph.drain()
    assert delta is not None
    assert [e["id"] for e in delta["edges"]] == ["shop/client>shop/server:9090/TCP"]
    (edge,) = delta["edges"]
    assert edge["counts"][1] == 1  # by VERDICTS: forwarded, dropped, audit, other
    bucket = str(drop.time.seconds // BUCKET_S * BUCKET_S)
    assert edge["buckets"] == {bucket: [0, 1, 0, 0]}
    assert delta["flows"][0]["verdict"] == "dropped"
    assert delta["flows"][0]["drop_reason"] == "POLICY_DENIED"
    snapshot = graph.snapshot()
    assert len(snapshot["edges"]) == len(graph.edges)
    assert all(e["buckets"] for e in snapshot["edges"])


def test_edges_older_than_the_longest_window_are_forgotten() -> None:
    graph = _graph()
    graph.drain()
    newest = max(e.last_seen for e in graph.edges.values())
    old = graph.edges["world>shop/server:22/TCP"]
    old.last_seen = newest - 7200
    graph.forget_older_than(newest - 3600)
    assert "world>shop/server:22/TCP" not in graph.edges
    assert "world" in graph.nodes  # still an end of the ICMP edge
    delta = graph.drain()
    assert delta is not None
    assert delta["removed_edges"] == ["world>shop/server:22/TCP"] and delta["removed_nodes"] == []
    graph.forget_older_than(newest + 1)
    assert not graph.edges and not graph.nodes
    delta = graph.drain()
    assert delta is not None and len(delta["removed_nodes"]) == 4
