"""Every FlowFilter field we honour, and the whitelist/blacklist list semantics, on built flows."""

from __future__ import annotations

import pytest
from meshagent.observer.convert import FlowBuilder
from meshagent.observer.filters import FilterError, FlowMatcher, compile_filter
from meshagent.observer.proto.flow import flow_pb2 as pb

from tests.observer import helpers as h


@pytest.fixture(scope="module")
def flows() -> list[pb.Flow]:
    builder = FlowBuilder(enricher=h.enricher(), node_name="node-a")
    return [builder.build(e) for e in h.sample_events()]


def idx(flows: list[pb.Flow], flt: pb.FlowFilter) -> list[int]:
    pred = compile_filter(flt)
    return [i for i, f in enumerate(flows) if pred(f)]


# Indices into helpers.sample_events():
# 0 client->server egress allowed   1 same, ingress          2 server->client reply trace (CONN_CLOSE)
# 3 client->db dropped (deny rule)  4 world->server dropped  5 client->db audited
# 6 client->svc UDP 53              7 client->svc TCP 80     8 client->world ICMP   9 client->server SCTP
CASES: list[tuple[str, pb.FlowFilter, list[int]]] = [
    ("source_ip exact", pb.FlowFilter(source_ip=["10.0.2.20"]), [2]),
    ("source_ip cidr", pb.FlowFilter(source_ip=["203.0.113.0/24"]), [4]),
    ("destination_ip list OR", pb.FlowFilter(destination_ip=["10.0.3.30", "203.0.113.7"]), [3, 5, 8]),
    ("source_pod ns/prefix", pb.FlowFilter(source_pod=["shop/server"]), [2]),
    ("source_pod prefix any ns", pb.FlowFilter(source_pod=["client"]), [0, 1, 3, 5, 6, 7, 8, 9]),
    ("destination_pod namespace only", pb.FlowFilter(destination_pod=["data/"]), [3, 5]),
    ("destination_pod other ns", pb.FlowFilter(destination_pod=["data/server"]), []),
    ("source_label", pb.FlowFilter(source_label=["k8s:app=server"]), [2]),
    ("destination_label no source prefix", pb.FlowFilter(destination_label=["app in (db)"]), [3, 5]),
    ("source_label world", pb.FlowFilter(source_label=["reserved:world"]), [4]),
    ("destination_label notin", pb.FlowFilter(destination_label=["app notin (server,db)"]), [2, 6, 7, 8]),
    ("destination_label exists and not", pb.FlowFilter(destination_label=["tier,!nothere"]), [0, 1, 4, 9, 2]),
    ("destination_service", pb.FlowFilter(destination_service=["shop/web"]), [7]),
    ("destination_service prefix", pb.FlowFilter(destination_service=["we"]), [7]),
    ("source_workload", pb.FlowFilter(source_workload=[pb.Workload(name="server")]), [2]),
    (
        "destination_workload kind",
        pb.FlowFilter(destination_workload=[pb.Workload(kind="StatefulSet")]),
        [3, 5],
    ),
    ("traffic_direction", pb.FlowFilter(traffic_direction=[pb.INGRESS]), [1, 4]),
    ("verdict dropped", pb.FlowFilter(verdict=[pb.DROPPED]), [3, 4]),
    ("verdict audit or forwarded", pb.FlowFilter(verdict=[pb.AUDIT]), [5]),
    ("drop_reason_desc", pb.FlowFilter(drop_reason_desc=[pb.POLICY_DENIED]), [4]),
    ("event_type drop", pb.FlowFilter(event_type=[pb.EventTypeFilter(type=1)]), [3, 4]),
    ("event_type trace", pb.FlowFilter(event_type=[pb.EventTypeFilter(type=4)]), [2]),
    (
        "event_type drop sub type",
        pb.FlowFilter(event_type=[pb.EventTypeFilter(type=1, match_sub_type=True, sub_type=181)]),
        [3],
    ),
    ("protocol udp", pb.FlowFilter(protocol=["UDP"]), [6]),
    ("protocol icmp/sctp", pb.FlowFilter(protocol=["icmp", "sctp"]), [8, 9]),
    ("protocol http matches nothing", pb.FlowFilter(protocol=["http"]), []),
    ("source_port", pb.FlowFilter(source_port=["80"]), [2]),
    ("destination_port", pb.FlowFilter(destination_port=["5432", "22"]), [3, 4, 5]),
    ("reply", pb.FlowFilter(reply=[True]), [2]),
    ("source_identity", pb.FlowFilter(source_identity=[2]), [4]),
    ("destination_identity", pb.FlowFilter(destination_identity=[h.DB_ID]), [3, 5]),
    ("tcp_flags SYN+ACK", pb.FlowFilter(tcp_flags=[pb.TCPFlags(SYN=True, ACK=True)]), [2]),
    ("node_name glob", pb.FlowFilter(node_name=["node-*"]), list(range(10))),
    ("node_name cluster/node", pb.FlowFilter(node_name=["default/other"]), []),
    ("ip_version", pb.FlowFilter(ip_version=[pb.IPv6]), []),
    ("interface", pb.FlowFilter(interface=[pb.NetworkInterface(index=1)]), list(range(10))),
    ("http filter matches nothing", pb.FlowFilter(http_status_code=["5+"]), []),
    ("fields AND", pb.FlowFilter(source_pod=["shop/client"], verdict=[pb.DROPPED]), [3]),
]


@pytest.mark.parametrize(("name", "flt", "expected"), CASES, ids=[c[0] for c in CASES])
def test_filter_kind(flows: list[pb.Flow], name: str, flt: pb.FlowFilter, expected: list[int]) -> None:
    assert idx(flows, flt) == sorted(expected), name


def test_uuid_filter(flows: list[pb.Flow]) -> None:
    assert idx(flows, pb.FlowFilter(uuid=[flows[4].uuid])) == [4]


def test_whitelist_filters_or_and_blacklist_subtracts(flows: list[pb.Flow]) -> None:
    white = [pb.FlowFilter(verdict=[pb.DROPPED]), pb.FlowFilter(protocol=["udp"])]
    m = FlowMatcher(white)
    assert [i for i, f in enumerate(flows) if m(f)] == [3, 4, 6]
    m = FlowMatcher(white, [pb.FlowFilter(source_label=["reserved:world"])])
    assert [i for i, f in enumerate(flows) if m(f)] == [3, 6]
    only_black = FlowMatcher([], [pb.FlowFilter(source_pod=["shop/client"])])
    assert [i for i, f in enumerate(flows) if only_black(f)] == [2, 4]


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (pb.FlowFilter(source_ip=["10.0.0.300"]), "source_ip"),
        (pb.FlowFilter(destination_ip=["nonsense/8"]), "destination_ip"),
        (pb.FlowFilter(source_port=["http"]), "source_port"),
        (pb.FlowFilter(destination_port=["70000"]), "destination_port"),
        (pb.FlowFilter(protocol=["carrier-pigeon"]), "protocol"),
        (pb.FlowFilter(source_label=["app in (a"]), "source_label"),
        (pb.FlowFilter(destination_label=["a=b=c d"]), "destination_label"),
        (pb.FlowFilter(source_pod=["a/b/c"]), "source_pod"),
        (pb.FlowFilter(http_path=["(unclosed"]), "http_path"),
        (pb.FlowFilter(dns_query=["*bad"]), "dns_query"),
        (pb.FlowFilter(http_status_code=["abc"]), "http_status_code"),
        (pb.FlowFilter(tcp_flags=[pb.TCPFlags()]), "tcp_flags"),
        (pb.FlowFilter(node_name=[""]), "node_name"),
    ],
)
def test_malformed_filters_are_rejected(flt: pb.FlowFilter, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        compile_filter(flt)


def test_unknown_filter_fields_are_rejected_not_ignored() -> None:
    # Field 999 (a newer client's "experimental" filter) arrives as an unknown field: refusing it is
    # better than silently returning unfiltered flows.
    raw = pb.FlowFilter(source_pod=["x"]).SerializeToString() + bytes([0xBA, 0x3E, 0x01, 0x78])
    flt = pb.FlowFilter.FromString(raw)
    with pytest.raises(FilterError, match="999"):
        compile_filter(flt)


@pytest.mark.parametrize(("name", "flt", "expected"), CASES, ids=[c[0] for c in CASES])
def test_template_shortcut_agrees_with_full_match(name: str, flt: pb.FlowFilter, expected: list[int]) -> None:
    # History scans decide template-level fields once per template; the answer must be the same as
    # matching the built flow, for whitelists and blacklists, with per-event fields mixed in.
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events() * 3)
    mixed = pb.FlowFilter()
    mixed.CopyFrom(flt)
    mixed.destination_port.append("80")
    for white, black in (
        ([flt], []),
        ([], [flt]),
        ([mixed], []),
        ([flt, mixed], [pb.FlowFilter(reply=[True])]),
    ):
        m = FlowMatcher(white, black)
        cache: dict = {}  # type: ignore[type-arg]
        for e in pipeline.ring.snapshot():
            assert e.prepared is not None
            fresh = e.prepared.message()
            assert m.match_prepared(e.prepared.template, e.prepared.message, cache) == m(fresh), name
