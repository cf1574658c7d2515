"""observer.wire: GetFlowsResponse bytes made without a flow.Flow parse to the message the full flow gives."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import IDENTITY_HOST, IDENTITY_WORLD, Direction, Verdict
from meshagent.observer.clock import WallClock
from meshagent.observer.convert import FlowBuilder, PreparedFlow, UuidSource
from meshagent.observer.enrich import EndpointInfo, PolicyRef, ServiceRef, StaticEnricher, WorkloadRef
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.wire import flow_response_bytes, frames_for, grpc_frame, node_name_field, varint

CLIENT, SERVER, SVC, WORLD = (IPv4Address(a) for a in ("10.0.1.10", "10.0.2.20", "10.96.0.10", "203.0.113.7"))
UNKNOWN = IPv4Address("10.0.9.9")  # in no enricher table
ALLOW_RULE, DENY_RULE, UNKNOWN_RULE = 7, 9, 77
ENDPOINT_ID = 11


class ZeroOffsetClock(WallClock):
    """Event timestamps are the flows' wall times, so a test picks the exact time."""

    def resync(self) -> None:
        self._offset_ns = 0


def rich_enricher() -> StaticEnricher:
    e = StaticEnricher.from_mappings(
        endpoints={
            CLIENT: EndpointInfo(
                1001, "shop", "client-1", ("k8s:app=client",), (WorkloadRef("client", "Deployment"),)
            ),
            SERVER: EndpointInfo(1002, "shop", "server-1", ("k8s:app=server", "k8s:tier=back"), ()),
        },
        rules={
            ALLOW_RULE: (PolicyRef("NetworkPolicy", "shop", "allow-web"),),
            DENY_RULE: (
                PolicyRef("AdminNetworkPolicy", "", "deny-db"),
                PolicyRef("NetworkPolicy", "shop", "other", ("k8s:a=b",), 3),
            ),
        },
        services={(SVC, 80, 6): ServiceRef("shop", "web"), (SERVER, 8080, 17): ServiceRef("shop", "udp")},
    )
    e.identities[4242] = ("k8s:team=x",)
    e.isolating[(ENDPOINT_ID, True)] = (PolicyRef("NetworkPolicy", "shop", "isolate-egress"),)
    e.isolating[(ENDPOINT_ID, False)] = (PolicyRef("NetworkPolicy", "shop", "isolate-ingress"),)
    return e


def expected(p: PreparedFlow, node_name: str) -> opb.GetFlowsResponse:
    """What GetFlows sends for a flow, built the plain way from the materialized message."""
    flow = p.message()
    resp = opb.GetFlowsResponse(flow=flow, node_name=node_name)
    resp.time.CopyFrom(flow.time)
    return resp


def check(p: PreparedFlow, node_name: str) -> None:
    got = opb.GetFlowsResponse.FromString(flow_response_bytes(p, node_name_field(node_name)))
    assert got == expected(p, node_name)


ADDRS = st.sampled_from([CLIENT, SERVER, SVC, WORLD, UNKNOWN])
PORTS = st.one_of(st.sampled_from([0, 1, 80, 127, 128, 8080, 16383, 16384, 65535]), st.integers(0, 65535))
NANOS = st.one_of(st.just(0), st.integers(0, 999_999_999))
SECONDS = st.one_of(st.sampled_from([0, 1, 1_700_000_000]), st.integers(0, 2**40))


@st.composite
def events(draw: st.DrawFn) -> DatapathEvent:
    return DatapathEvent(
        timestamp_ns=draw(SECONDS) * 1_000_000_000 + draw(NANOS),
        type=draw(st.sampled_from(EventType)),
        verdict=draw(st.one_of(st.none(), st.sampled_from(Verdict))),
        drop_reason=draw(st.sampled_from(DropReason)),
        direction=draw(st.sampled_from(Direction)),
        endpoint_id=draw(st.sampled_from([0, ENDPOINT_ID, 12])),
        ifindex=draw(st.sampled_from([0, 1, 999_999])),
        saddr=draw(ADDRS),
        daddr=draw(ADDRS),
        sport=draw(PORTS),
        dport=draw(PORTS),
        protocol=draw(st.sampled_from([6, 6, 17, 132, 1, 0, 47, 58, 255])),
        tcp_flags=draw(st.integers(0, 255)),
        is_reply=draw(st.booleans()),
        rule_id=draw(st.sampled_from([0, ALLOW_RULE, DENY_RULE, UNKNOWN_RULE])),
        src_identity=draw(st.sampled_from([0, 1001, 4242, IDENTITY_WORLD, IDENTITY_HOST, 16777217])),
        dst_identity=draw(st.sampled_from([0, 1002, 4242, IDENTITY_WORLD])),
    )


NODE_NAMES = st.sampled_from(["", "node-a", "nöde-ü", "n" * 200])
# Counters past 2**48 make uuids longer than 36 characters: still encoded right.
UUID_STARTS = st.one_of(st.just(0), st.integers(0, 2**48 + 5), st.just(2**64))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    evs=st.lists(events(), min_size=1, max_size=8),
    node_name=NODE_NAMES,
    uuid_start=UUID_STARTS,
    rich=st.booleans(),
)
def test_encoding_parses_to_the_materialized_flow(
    evs: list[DatapathEvent], node_name: str, uuid_start: int, rich: bool
) -> None:
    # Several events per builder: flows share templates (and their cached encoding) across ports and flags.
    builder = FlowBuilder(
        enricher=rich_enricher() if rich else StaticEnricher(),
        node_name=node_name,
        clock=ZeroOffsetClock(),
        uuids=UuidSource(start=uuid_start),
    )
    for ev in evs:
        check(builder.prepare(ev), node_name)


@settings(max_examples=50, deadline=None)
@given(
    base=events(), variants=st.lists(st.tuples(PORTS, PORTS, st.integers(0, 255), st.booleans()), max_size=20)
)
def test_flows_sharing_one_template_each_get_their_own_fields(
    base: DatapathEvent, variants: list[tuple[int, int, int, bool]]
) -> None:
    builder = FlowBuilder(enricher=rich_enricher(), node_name="node-a", clock=ZeroOffsetClock())
    prepared = [builder.prepare(base)]
    for sport, dport, flags, reply in variants:
        ev = base._replace(sport=sport, dport=dport, tcp_flags=flags)
        # is_reply is not part of the template key unless a source service is found for it.
        ev = ev._replace(is_reply=reply)
        prepared.append(builder.prepare(ev))
    for p in prepared:
        check(p, "node-a")
    # Read once more, in reverse: the cached template part does not depend on which flow was first.
    for p in reversed(prepared):
        check(p, "node-a")


def tcp_event(**kw: object) -> DatapathEvent:
    fields: dict[str, object] = dict(
        timestamp_ns=1_700_000_000_123_456_789,
        type=EventType.POLICY_VERDICT,
        verdict=Verdict.ALLOWED,
        drop_reason=DropReason.NONE,
        direction=Direction.EGRESS,
        endpoint_id=ENDPOINT_ID,
        ifindex=1,
        saddr=CLIENT,
        daddr=SERVER,
        sport=40000,
        dport=80,
        protocol=6,
        tcp_flags=0x02,
        is_reply=False,
        rule_id=ALLOW_RULE,
        src_identity=1001,
        dst_identity=1002,
    )
    fields.update(kw)
    return DatapathEvent(**fields)  # type: ignore[arg-type]


def test_edge_fields_are_present_as_in_the_flow() -> None:
    builder = FlowBuilder(enricher=rich_enricher(), node_name="n", clock=ZeroOffsetClock())
    cases = {
        "no flags: empty TCPFlags": tcp_event(tcp_flags=0),
        "zero ports": tcp_event(sport=0, dport=0),
        "time zero: empty Timestamp": tcp_event(timestamp_ns=0),
        "whole second": tcp_event(timestamp_ns=5_000_000_000),
        "reply": tcp_event(is_reply=True, tcp_flags=0x12),
        "udp zero ports: empty UDP": tcp_event(protocol=17, sport=0, dport=0),
        "icmp": tcp_event(protocol=1, sport=0, dport=0, tcp_flags=0),
        "other protocol": tcp_event(protocol=47),
    }
    for name, ev in cases.items():
        p = builder.prepare(ev)
        got = opb.GetFlowsResponse.FromString(flow_response_bytes(p, node_name_field("n")))
        assert got == expected(p, "n"), name
        assert got.HasField("time") and got.flow.HasField("time") and got.flow.HasField("is_reply"), name
    tcp = opb.GetFlowsResponse.FromString(
        flow_response_bytes(builder.prepare(cases["no flags: empty TCPFlags"]), b"")
    )
    assert tcp.flow.l4.TCP.HasField("flags") and tcp.flow.Summary == "TCP"
    assert tcp.node_name == ""


def test_uuid_and_time_are_the_prepared_ones() -> None:
    builder = FlowBuilder(enricher=StaticEnricher(), node_name="n", clock=ZeroOffsetClock())
    p1, p2 = builder.prepare(tcp_event()), builder.prepare(tcp_event())
    r1 = opb.GetFlowsResponse.FromString(flow_response_bytes(p1, b""))
    r2 = opb.GetFlowsResponse.FromString(flow_response_bytes(p2, b""))
    assert r1.flow.uuid == p1.uuid and r2.flow.uuid == p2.uuid and p1.uuid != p2.uuid
    assert len(p1.uuid) == 36
    assert r1.time.ToNanoseconds() == r1.flow.time.ToNanoseconds() == 1_700_000_000_123_456_789


def test_node_name_field_is_the_response_node_name() -> None:
    assert node_name_field("") == b""
    assert opb.GetFlowsResponse.FromString(node_name_field("node-ü")).node_name == "node-ü"


def test_varint_matches_protobuf() -> None:
    tag = varint(pb.Policy.DESCRIPTOR.fields_by_name["revision"].number << 3)  # a uint64 field
    for n in [0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**35 - 1, 2**35, 2**64 - 1]:
        assert pb.Policy.FromString(tag + varint(n)).revision == n


def parse_frames(data: bytes) -> list[bytes]:
    out = []
    while data:
        compressed, length = struct.unpack(">BI", data[:5])
        assert compressed == 0
        out.append(data[5 : 5 + length])
        data = data[5 + length :]
    return out


def test_grpc_frame_prefixes_flag_and_big_endian_length() -> None:
    assert grpc_frame(b"") == b"\x00\x00\x00\x00\x00"
    msg = bytes(range(256)) * 300
    framed = grpc_frame(msg)
    assert framed[:5] == b"\x00" + len(msg).to_bytes(4, "big") and framed[5:] == msg


def test_frames_for_concatenates_one_framed_response_per_flow() -> None:
    builder = FlowBuilder(enricher=rich_enricher(), node_name="node-a", clock=ZeroOffsetClock())
    prepared = [builder.prepare(tcp_event(sport=40000 + i, protocol=(6, 17, 1)[i % 3])) for i in range(7)]
    tail = node_name_field("node-a")
    data = frames_for(prepared, tail)
    msgs = parse_frames(data)
    assert msgs == [flow_response_bytes(p, tail) for p in prepared]
    assert [opb.GetFlowsResponse.FromString(m) for m in msgs] == [expected(p, "node-a") for p in prepared]
    assert frames_for([], tail) == b""


def test_icmp_flows_carry_type_and_code_each() -> None:
    builder = FlowBuilder(enricher=StaticEnricher(), node_name="node-a", clock=ZeroOffsetClock())
    base = DatapathEvent(
        timestamp_ns=1,
        type=EventType.DROP,
        verdict=None,
        drop_reason=DropReason.POLICY_DEFAULT_DENY,
        direction=Direction.INGRESS,
        endpoint_id=1,
        ifindex=2,
        saddr=IPv4Address("10.0.0.1"),
        daddr=IPv4Address("10.0.0.2"),
        sport=0,
        dport=0,
        protocol=1,
        tcp_flags=0,
        is_reply=False,
        rule_id=0,
        src_identity=2,
        dst_identity=300,
    )
    # Same conversation, different ICMP messages: each flow names its own type and code.
    for icmp_type, icmp_code in ((3, 4), (11, 0), (3, 3)):
        flow = builder.prepare(base._replace(icmp_type=icmp_type, icmp_code=icmp_code)).message()
        assert flow.l4.WhichOneof("protocol") == "ICMPv4"
        assert (flow.l4.ICMPv4.type, flow.l4.ICMPv4.code) == (icmp_type, icmp_code)
