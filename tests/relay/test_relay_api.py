"""The Observer API through the relay, read with the generated (Hubble-shaped) stubs: two nodes' flows
merged in time order, first/last N and filters over both, the status of both, and nodes that are or go
out of reach reported in the stream instead of failing it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from meshagent.observer.client import ObserverClient
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.relay import relay_pb2 as rpb
from meshagent.relay.peers import PeerSpec

from tests.observer import helpers as h
from tests.relay.helpers import Relayed, relay_for, relayed, serve_node
from tests.waiting import wait_until

FOLLOW_LATENCY_S = 1.5  # a node's new flow reaches a relay follower within this (sort drain 0.2 s)


@pytest.fixture
def both(tmp_path: Path) -> Relayed:
    with relayed(tmp_path) as r:
        yield r  # type: ignore[misc]


def flows_of(responses: list[opb.GetFlowsResponse]) -> list[pb.Flow]:
    return [r.flow for r in responses if r.HasField("flow")]


def statuses(responses: list[opb.GetFlowsResponse]) -> list[tuple[int, list[str]]]:
    return [
        (r.node_status.state_change, list(r.node_status.node_names))
        for r in responses
        if r.HasField("node_status")
    ]


def get(target: str, **kw: object) -> list[opb.GetFlowsResponse]:
    with ObserverClient(target) as c:
        return list(c.get_flows(opb.GetFlowsRequest(**kw)))  # type: ignore[arg-type]


def test_all_flows_of_both_nodes_in_time_order(both: Relayed) -> None:
    responses = get(both.target)
    assert statuses(responses) == [(rpb.NODE_CONNECTED, ["node-a", "node-b"])]
    flows = flows_of(responses)
    assert len(flows) == 20
    times = [f.time.ToNanoseconds() for f in flows]
    assert times == sorted(times)
    assert [f.node_name for f in flows] == ["node-a", "node-b"] * 10
    for r in responses:
        if r.HasField("flow"):
            assert r.node_name == r.flow.node_name and r.time == r.flow.time


def test_last_and_first_n_are_over_all_nodes(both: Relayed) -> None:
    last = flows_of(get(both.target, number=3))
    assert [(f.node_name, f.l4.WhichOneof("protocol")) for f in last] == [
        ("node-b", "ICMPv4"),
        ("node-a", "SCTP"),
        ("node-b", "SCTP"),
    ]
    first = flows_of(get(both.target, number=3, first=True))
    assert [(f.node_name, f.traffic_direction) for f in first] == [
        ("node-a", pb.EGRESS),
        ("node-b", pb.EGRESS),
        ("node-a", pb.INGRESS),
    ]
    assert len(flows_of(get(both.target, number=(1 << 64) - 1))) == 20


def test_filters_and_time_window_apply_on_every_node(both: Relayed) -> None:
    dropped = flows_of(get(both.target, number=3, whitelist=[pb.FlowFilter(verdict=[pb.DROPPED])]))
    assert [f.node_name for f in dropped] == ["node-b", "node-a", "node-b"]
    assert all(f.verdict == pb.DROPPED for f in dropped)
    only_b = flows_of(get(both.target, whitelist=[pb.FlowFilter(node_name=["node-b"])]))
    assert {f.node_name for f in only_b} == {"node-b"} and len(only_b) == 10
    everything = flows_of(get(both.target))
    since, until = everything[4].time, everything[9].time
    window = flows_of(get(both.target, since=since, until=until))
    assert [f.uuid for f in window] == [f.uuid for f in everything[4:10]]


@pytest.mark.parametrize(
    ("request_kw", "message"),
    [
        ({"first": True, "follow": True}, "first"),
        ({"whitelist": [pb.FlowFilter(source_ip=["999.1.1.1"])]}, "source_ip"),
    ],
)
def test_invalid_requests_get_invalid_argument(
    both: Relayed, request_kw: dict[str, object], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        get(both.target, **request_kw)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


def test_status_nodes_and_namespaces_add_up(both: Relayed) -> None:
    with ObserverClient(both.target) as c:
        status = c.server_status()
        nodes = c.get_nodes()
        namespaces = c.get_namespaces()
    assert (status.num_flows, status.max_flows, status.seen_flows) == (20, 8192, 20)
    assert (status.num_connected_nodes.value, status.num_unavailable_nodes.value) == (2, 0)
    assert status.version.startswith("meshagent-relay")
    assert [(n.name, n.state, n.num_flows) for n in nodes.nodes] == [
        ("node-a", rpb.NODE_CONNECTED, 10),
        ("node-b", rpb.NODE_CONNECTED, 10),
    ]
    assert [n.namespace for n in namespaces.namespaces] == ["data", "shop"]


def test_follow_merges_new_flows_of_both_nodes_quickly(both: Relayed) -> None:
    got: list[tuple[float, opb.GetFlowsResponse]] = []
    with ObserverClient(both.target) as c:
        stream = c.get_flows(opb.GetFlowsRequest(number=2, follow=True), follow_timeout_s=15)

        def reader() -> None:
            for r in stream:
                got.append((time.monotonic(), r))
                if len(flows_of([g for _, g in got])) >= 4:
                    return

        thread = threading.Thread(target=reader)
        thread.start()
        assert wait_until(lambda: len(flows_of([g for _, g in got])) >= 2, timeout=10)
        assert wait_until(lambda: all(n.pipeline.ring.waiting >= 1 for n in both.nodes.values()), timeout=10)
        sent = time.monotonic()
        both.pipeline("node-b").on_event(h.event(dport=9002, ts_ns=time.monotonic_ns()))
        both.pipeline("node-a").on_event(h.event(dport=9001, ts_ns=time.monotonic_ns() + 1000))
        thread.join(timeout=10)
    flows = flows_of([g for _, g in got])
    # The last two of the backlog over both nodes, then the new ones in time order (b's came first).
    assert [f.node_name for f in flows[:2]] == ["node-a", "node-b"]
    assert [(f.node_name, f.l4.TCP.destination_port) for f in flows[2:]] == [
        ("node-b", 9002),
        ("node-a", 9001),
    ]
    arrived = next(t for t, r in got if r.HasField("flow") and r.flow.l4.TCP.destination_port == 9001)
    assert arrived - sent < FOLLOW_LATENCY_S


def test_follow_with_until_ends_when_every_node_is_done(both: Relayed) -> None:
    req = opb.GetFlowsRequest(follow=True)
    req.since.FromNanoseconds(time.time_ns() - 3600 * 1_000_000_000)
    req.until.FromNanoseconds(time.time_ns() + 300_000_000)
    started = time.monotonic()
    with ObserverClient(both.target) as c:
        responses = list(c.get_flows(req, follow_timeout_s=15))
    assert len(flows_of(responses)) == 20
    assert time.monotonic() - started < 5


def test_an_unreachable_node_is_reported_not_fatal(tmp_path: Path) -> None:
    gone = tmp_path / "nobody.sock"
    with (
        serve_node(tmp_path, "node-a") as served,
        relay_for(tmp_path, [PeerSpec(served.target, "node-a"), PeerSpec(f"unix://{gone}", "node-gone")]) as (
            _,
            sock,
        ),
    ):
        target = f"unix://{sock}"
        responses = get(target)
        assert [s for s in statuses(responses)] == [
            (rpb.NODE_CONNECTED, ["node-a"]),
            (rpb.NODE_UNAVAILABLE, ["node-gone"]),
        ]
        unavailable = next(r for r in responses if r.node_status.state_change == rpb.NODE_UNAVAILABLE)
        assert "node-gone" in unavailable.node_status.message
        assert len(flows_of(responses)) == 10
        with ObserverClient(target) as c:
            status = c.server_status()
            nodes = c.get_nodes()
        assert (status.num_connected_nodes.value, status.num_unavailable_nodes.value) == (1, 1)
        assert list(status.unavailable_nodes) == ["node-gone"]
        assert status.num_flows == 10
        assert [(n.name, n.state) for n in nodes.nodes] == [
            ("node-a", rpb.NODE_CONNECTED),
            ("node-gone", rpb.NODE_UNAVAILABLE),
        ]


def test_a_node_that_goes_away_is_reported_and_followed_again_when_back(tmp_path: Path) -> None:
    """Node b's server stops while a client follows through the relay, and comes back (a restarted
    agent) with a flow it saw meanwhile: the follower is told both changes and gets that flow."""
    with serve_node(tmp_path, "node-a") as a, ExitStack() as node_b:
        b = node_b.enter_context(serve_node(tmp_path, "node-b"))
        b_sock = b.socket
        with relay_for(tmp_path, [PeerSpec(a.target, "node-a"), PeerSpec(b.target, "node-b")]) as (_, sock):
            got: list[opb.GetFlowsResponse] = []
            with ObserverClient(f"unix://{sock}") as c:
                stream = c.get_flows(opb.GetFlowsRequest(follow=True), follow_timeout_s=30)

                def reader() -> None:
                    for r in stream:
                        got.append(r)
                        if r.HasField("flow") and r.flow.l4.TCP.destination_port == 7070:
                            return

                thread = threading.Thread(target=reader)
                thread.start()
                assert wait_until(lambda: len(statuses(got)) >= 2, timeout=10)
                node_b.close()
                assert wait_until(lambda: (rpb.NODE_UNAVAILABLE, ["node-b"]) in statuses(got), timeout=10)
                # Back on the same socket; the flow it saw while the relay could not reach it comes through.
                pipeline = h.make_pipeline(node_name="node-b")
                pipeline.on_event(h.event(dport=7070, ts_ns=time.monotonic_ns()))
                with h.serve(pipeline, b_sock):
                    thread.join(timeout=15)
            assert not thread.is_alive()
            changes = statuses(got)
            assert changes.index((rpb.NODE_UNAVAILABLE, ["node-b"])) < len(changes) - 1
            assert changes[-1] == (rpb.NODE_CONNECTED, ["node-b"])
            last = flows_of(got)[-1]
            assert (last.node_name, last.l4.TCP.destination_port) == ("node-b", 7070)


def test_meshagent_flows_works_against_the_relay_unchanged(both: Relayed) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshagent.cli.main",
            "flows",
            "--server",
            both.target,
            "--last",
            "4",
            "--print-node-name",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 4
    assert [line.split("[")[1].split("]")[0] for line in lines] == ["node-a", "node-b", "node-a", "node-b"]


def test_follow_with_until_ends_even_with_a_node_out_of_reach(tmp_path: Path) -> None:
    with (
        serve_node(tmp_path, "node-a") as served,
        relay_for(
            tmp_path,
            [PeerSpec(served.target, "node-a"), PeerSpec(f"unix://{tmp_path}/none.sock", "node-gone")],
        ) as (_, sock),
    ):
        req = opb.GetFlowsRequest(follow=True)
        req.since.FromNanoseconds(time.time_ns() - 3600 * 1_000_000_000)
        req.until.FromNanoseconds(time.time_ns() + 300_000_000)
        started = time.monotonic()
        with ObserverClient(f"unix://{sock}") as c:
            responses = list(c.get_flows(req, follow_timeout_s=15))
        assert time.monotonic() - started < 5
        assert len(flows_of(responses)) == 10
        assert (rpb.NODE_UNAVAILABLE, ["node-gone"]) in statuses(responses)


def test_a_large_request_goes_to_every_node_whole(both: Relayed) -> None:
    """Hundreds of filters (a request far beyond one HTTP/2 window) reach every node and run there."""
    pods = [f"ns-{i}/pod-{i}-with-a-long-name-for-bulk" for i in range(20_000)]
    request = opb.GetFlowsRequest(
        number=100, whitelist=[pb.FlowFilter(source_pod=[*pods, "shop/client-7d9f"])]
    )
    assert request.ByteSize() > 500_000
    with ObserverClient(both.target) as c:
        got = list(c.get_flows(request))
    assert statuses(got) == [(rpb.NODE_CONNECTED, ["node-a", "node-b"])]
    flows = flows_of(got)
    assert flows and {f.node_name for f in flows} == {"node-a", "node-b"}
    assert all(f.source.pod_name == "client-7d9f" for f in flows)


def test_a_follower_gets_the_node_status_first_then_only_new_flows(both: Relayed) -> None:
    with ObserverClient(both.target) as c:
        stream = c.get_flows(opb.GetFlowsRequest(follow=True), follow_timeout_s=10)
        first = next(stream)
        assert first.HasField("node_status")

        def push_once_followed() -> None:
            if wait_until(lambda: both.pipeline("node-b").ring.waiting >= 1, timeout=10):
                both.pipeline("node-b").on_event(h.event(dport=4242))

        threading.Thread(target=push_once_followed).start()
        following = next(r for r in stream if r.HasField("flow"))
    assert (following.node_name, following.flow.l4.TCP.destination_port) == ("node-b", 4242)
