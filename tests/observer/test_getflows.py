"""GetFlows over a real gRPC server on a Unix socket, read with the generated (Hubble-shaped) client stubs."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import grpc
import pytest
from meshagent.observer.client import ObserverClient
from meshagent.observer.limits import ServerLimits
from meshagent.observer.pipeline import FlowPipeline
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.observer import observer_pb2_grpc as ogrpc
from meshagent.observer.ring import FlowRing

from tests.observer import helpers as h
from tests.waiting import wait_until

FOLLOW_LATENCY_S = 0.5  # a follower must see a new flow within this time


def flows_of(responses: list[opb.GetFlowsResponse]) -> list[pb.Flow]:
    return [r.flow for r in responses if r.HasField("flow")]


def get(served: h.Served, **kw: object) -> list[opb.GetFlowsResponse]:
    with ObserverClient(served.target) as c:
        return list(c.get_flows(opb.GetFlowsRequest(**kw)))  # type: ignore[arg-type]


def test_socket_is_owner_only(served: h.Served) -> None:
    mode = os.stat(served.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_plain_generated_stub_reads_flows_with_node_name_and_time(served: h.Served) -> None:
    with grpc.insecure_channel(served.target) as ch:
        stub = ogrpc.ObserverStub(ch)
        resps = list(stub.GetFlows(opb.GetFlowsRequest(number=2), timeout=5))
    assert len(resps) == 2
    for r in resps:
        assert r.node_name == "node-a"
        assert r.time == r.flow.time
        assert r.flow.uuid
    assert resps[-1].flow.l4.SCTP.destination_port == 3868


def test_last_n_is_the_newest_in_order(served: h.Served) -> None:
    fl = flows_of(get(served, number=3))
    assert [f.l4.WhichOneof("protocol") for f in fl] == ["TCP", "ICMPv4", "SCTP"]
    times = [f.time.ToNanoseconds() for f in fl]
    assert times == sorted(times)


def test_first_n_is_the_oldest(served: h.Served) -> None:
    fl = flows_of(get(served, number=2, first=True))
    assert [f.traffic_direction for f in fl] == [pb.EGRESS, pb.INGRESS]
    assert fl[0].egress_allowed_by[0].name == "allow-web"


def test_number_zero_means_all(served: h.Served) -> None:
    assert len(flows_of(get(served))) == 10
    assert len(flows_of(get(served, number=(1 << 64) - 1))) == 10


def test_last_n_counts_matching_flows_only(served: h.Served) -> None:
    fl = flows_of(get(served, number=1, whitelist=[pb.FlowFilter(verdict=[pb.DROPPED])]))
    assert len(fl) == 1
    assert fl[0].drop_reason_desc == pb.POLICY_DENIED  # the newest drop: world -> server, default deny


def test_since_until_window(served: h.Served) -> None:
    all_flows = flows_of(get(served))
    since, until = all_flows[2].time, all_flows[4].time
    fl = flows_of(get(served, since=since, until=until))
    assert [f.uuid for f in fl] == [f.uuid for f in all_flows[2:5]]


def test_whitelist_minus_blacklist_over_grpc(served: h.Served) -> None:
    fl = flows_of(
        get(
            served,
            whitelist=[pb.FlowFilter(verdict=[pb.DROPPED]), pb.FlowFilter(protocol=["udp"])],
            blacklist=[pb.FlowFilter(source_label=["reserved:world"])],
        )
    )
    assert [(f.verdict, f.l4.WhichOneof("protocol")) for f in fl] == [
        (pb.DROPPED, "TCP"),
        (pb.FORWARDED, "UDP"),
    ]


@pytest.mark.parametrize(
    ("request_kw", "message"),
    [
        ({"first": True, "follow": True}, "first"),
        ({"whitelist": [pb.FlowFilter(source_ip=["999.1.1.1"])]}, "source_ip"),
        ({"blacklist": [pb.FlowFilter(http_path=["[unclosed"])]}, "http_path"),
        ({"whitelist": [pb.FlowFilter(source_label=["app in (x"])]}, "source_label"),
    ],
)
def test_invalid_requests_get_invalid_argument(
    served: h.Served, request_kw: dict[str, object], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        get(served, **request_kw)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


def test_since_after_until_is_invalid(served: h.Served) -> None:
    req = opb.GetFlowsRequest()
    req.since.FromSeconds(2000)
    req.until.FromSeconds(1000)
    with ObserverClient(served.target) as c, pytest.raises(grpc.RpcError) as info:
        list(c.get_flows(req))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "since" in (info.value.details() or "")


def test_follow_without_number_streams_only_new_flows(served: h.Served) -> None:
    with ObserverClient(served.target) as c:
        stream = c.get_flows(opb.GetFlowsRequest(follow=True), follow_timeout_s=10)

        def push_once_followed() -> None:
            # Only once the server waits for new flows is this one new to the follower.
            if wait_until(lambda: served.pipeline.ring.waiting >= 1, timeout=10):
                served.pipeline.on_event(h.event(dport=4242))

        threading.Thread(target=push_once_followed).start()
        first = next(stream)
    assert first.flow.l4.TCP.destination_port == 4242


def test_follower_sees_new_flow_quickly(served: h.Served) -> None:
    got: list[tuple[float, pb.Flow]] = []
    ready = threading.Event()
    with ObserverClient(served.target) as c:
        req = opb.GetFlowsRequest(number=1, follow=True, whitelist=[pb.FlowFilter(destination_port=["9999"])])
        stream = c.get_flows(req, follow_timeout_s=10)

        def reader() -> None:
            ready.set()
            for r in stream:
                if r.HasField("flow"):
                    got.append((time.monotonic(), r.flow))
                    return

        t = threading.Thread(target=reader)
        t.start()
        ready.wait()
        # The server has read everything held and waits for new flows: what is measured is a live flow.
        assert wait_until(lambda: served.pipeline.ring.waiting >= 1, timeout=10)
        sent = time.monotonic()
        served.pipeline.on_event(h.event(dport=9999))
        t.join(timeout=5)
    assert got, "follower saw nothing"
    latency = got[0][0] - sent
    assert got[0][1].l4.TCP.destination_port == 9999
    assert latency < FOLLOW_LATENCY_S, f"follower latency {latency:.3f}s"


def test_follow_with_until_ends_the_stream(served: h.Served) -> None:
    req = opb.GetFlowsRequest(follow=True)
    req.since.FromNanoseconds(time.time_ns() - 3600 * 1_000_000_000)  # history from `since`, then follow
    req.until.FromNanoseconds(time.time_ns() + 300_000_000)
    t0 = time.monotonic()
    with ObserverClient(served.target) as c:
        resps = list(c.get_flows(req, follow_timeout_s=10))
    assert len(flows_of(resps)) == 10
    assert time.monotonic() - t0 < 3


def test_server_status_nodes_namespaces(served: h.Served) -> None:
    with ObserverClient(served.target) as c:
        st = c.server_status()
        nodes = c.get_nodes()
        ns = c.get_namespaces()
    assert (st.num_flows, st.max_flows, st.seen_flows) == (10, 4096, 10)
    assert st.uptime_ns > 0
    assert st.version.startswith("meshagent")
    assert [n.name for n in nodes.nodes] == ["node-a"]
    assert nodes.nodes[0].num_flows == 10
    assert [n.namespace for n in ns.namespaces] == ["data", "shop"]


def test_ring_overflow_is_reported_to_a_lagging_follower(tmp_path: Path, serving_mode: bool) -> None:
    pipeline = h.make_pipeline(capacity=64)
    with (
        h.serve(pipeline, tmp_path / "o.sock", front_process=serving_mode) as served,
        ObserverClient(served.target) as c,
    ):
        stream = c.get_flows(opb.GetFlowsRequest(number=1, follow=True), follow_timeout_s=10)
        responses: list[opb.GetFlowsResponse] = []
        pipeline.on_event(h.event(dport=1))
        responses.append(next(stream))  # the stream is live; now the server is parked on the ring
        # Write far more than the ring holds, faster than the (not reading) client drains: the
        # server-side reader falls behind and must say how many it lost.
        burst = 5000
        for i in range(burst):
            pipeline.on_event(h.event(dport=1000 + (i % 1000)))
        deadline = time.monotonic() + 10
        total_flows = 1
        lost = 0
        for r in stream:
            if r.HasField("lost_events"):
                assert r.lost_events.source == pb.HUBBLE_RING_BUFFER
                lost += r.lost_events.num_events_lost
            elif r.HasField("flow"):
                total_flows += 1
            if total_flows + lost >= burst + 1 or time.monotonic() > deadline:
                break
    assert lost > 0
    assert total_flows + lost == burst + 1  # nothing vanished silently
    assert served.service.follower_lost == lost
    assert pipeline.stats().ring_overwritten == burst + 1 - 64


def test_kernel_losses_become_lost_events(tmp_path: Path, serving_mode: bool) -> None:
    counter = {"lost": 5}  # the datapath's cumulative counter; losses before we started are not ours
    pipeline = h.make_pipeline(kernel_lost=lambda: counter["lost"])
    pipeline.on_event(h.event())
    counter["lost"] = 42
    assert pipeline.check_kernel_lost() == 37
    pipeline.on_event(h.event())
    with h.serve(pipeline, tmp_path / "o.sock", front_process=serving_mode) as served:
        resps = get(served)
        with ObserverClient(served.target) as c:
            st = c.server_status()
    kinds = [r.WhichOneof("response_types") for r in resps]
    assert kinds == ["flow", "lost_events", "flow"]
    assert resps[1].lost_events.source == pb.PERF_EVENT_RING_BUFFER
    assert resps[1].lost_events.num_events_lost == 37
    assert st.lost_events_datapath == 37
    assert st.num_flows == 2  # the lost-event marker is not a flow


def test_loss_poller_reports_kernel_losses_within_a_second() -> None:
    from meshagent.observer.pipeline import LossPoller

    counter = {"lost": 0}
    pipeline = h.make_pipeline(kernel_lost=lambda: counter["lost"])
    poller = LossPoller(pipeline, interval_s=0.05)
    poller.start()
    try:
        counter["lost"] = 3
        wait_until(lambda: pipeline.stats().lost_datapath != 0, timeout=1.0)
    finally:
        poller.stop()
    assert pipeline.stats().lost_datapath == 3
    lost = [e.lost for e in pipeline.ring.snapshot() if e.lost is not None]
    assert len(lost) == 1 and lost[0].num_events_lost == 3


def test_too_many_followers_are_refused_not_queued(tmp_path: Path, serving_mode: bool) -> None:
    pipeline = h.make_pipeline()
    with (
        h.serve(
            pipeline,
            tmp_path / "o.sock",
            limits=ServerLimits(max_flow_streams=1, max_flow_streams_per_connection=1),
            front_process=serving_mode,
        ) as served,
        ObserverClient(served.target) as c,
    ):
        first = c.get_flows(opb.GetFlowsRequest(number=1, follow=True), follow_timeout_s=10)
        pipeline.on_event(h.event())
        next(first)  # holds the only worker
        with pytest.raises(grpc.RpcError) as info:
            list(c.get_flows(opb.GetFlowsRequest(number=1)))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_lagging_reader_gets_the_loss_markers_it_missed_and_a_count_of_flows_only() -> None:
    ring = FlowRing(8)
    pipeline = FlowPipeline(builder=h.make_pipeline().builder, ring=ring)
    pipeline.on_event(h.event(dport=1))
    pipeline.record_lost(pb.PERF_EVENT_RING_BUFFER, 37)  # a marker at seq 1
    pipeline.on_events([h.event(dport=100 + i) for i in range(20)])  # seq 2..21: the ring holds 14..21
    entries, next_seq, lost = ring.read_from(0, limit=100)
    assert next_seq == 22
    assert lost == 13  # seq 0..13 are gone: 13 flows and the marker, which comes back
    assert entries[0].lost is not None and entries[0].lost.num_events_lost == 37
    assert [e.seq for e in entries[1:]] == list(range(14, 22))
    assert ring.num_flows == 8
    # Many ring lengths behind: the marker is still remembered, and the count is still of flows only.
    pipeline.on_events([h.event(dport=200 + i) for i in range(100)])  # seq 22..121: the ring holds 114..121
    entries, next_seq, lost = ring.read_from(0, limit=100)
    assert (next_seq, lost) == (122, 113)
    assert entries[0].lost is not None and [e.seq for e in entries[1:]] == list(range(114, 122))


def test_a_large_request_is_served(served: h.Served) -> None:
    """A GetFlows request far beyond a small message (hundreds of filters) is read whole in either mode."""
    pods = [f"ns-{i}/pod-{i}-with-a-long-name-for-bulk" for i in range(20_000)]
    request = opb.GetFlowsRequest(number=100, whitelist=[pb.FlowFilter(source_pod=pods)])
    assert request.ByteSize() > 500_000
    with ObserverClient(served.target) as c:
        got = list(c.get_flows(request))
    assert got == []  # none of those pods sent anything: the request was parsed and run
