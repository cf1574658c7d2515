"""Flows of traffic between nodes: Hubble's IP.encrypted set from the datapath's flag, the `encrypted`
filter honoured (also on the prepared-flow path the server uses), strict drops with Hubble's reason."""

from __future__ import annotations

import struct

import pytest
from meshagent.datapath.events import FLAG_ENCRYPTED, EventRecord, decode
from meshagent.model.events import DropReason
from meshagent.model.kernel_state import Verdict
from meshagent.observer.convert import FlowBuilder
from meshagent.observer.filters import FlowMatcher, compile_filter
from meshagent.observer.proto.flow import flow_pb2 as pb

from tests.observer import helpers as h


@pytest.fixture
def builder() -> FlowBuilder:
    return FlowBuilder(enricher=h.enricher(), node_name="node-a")


def test_encrypted_flag_sets_ip_encrypted(builder: FlowBuilder) -> None:
    plain = builder.build(h.event())
    encrypted = builder.build(h.event()._replace(encrypted=True))
    assert (plain.IP.encrypted, encrypted.IP.encrypted) == (False, True)
    # Same conversation, once plain once encrypted: the template cache must keep them apart.
    assert builder.build(h.event()).IP.encrypted is False


def test_encrypted_filter_both_ways(builder: FlowBuilder) -> None:
    flows = [builder.build(h.event()), builder.build(h.event()._replace(encrypted=True))]
    only_encrypted = compile_filter(pb.FlowFilter(encrypted=[True]))
    only_plain = compile_filter(pb.FlowFilter(encrypted=[False]))
    either = compile_filter(pb.FlowFilter(encrypted=[True, False]))
    assert [only_encrypted(f) for f in flows] == [False, True]
    assert [only_plain(f) for f in flows] == [True, False]
    assert [either(f) for f in flows] == [True, True]


def test_encrypted_filter_on_prepared_flows(builder: FlowBuilder) -> None:
    prepared = builder.prepare_many([h.event(), h.event()._replace(encrypted=True)])
    matcher = FlowMatcher([pb.FlowFilter(encrypted=[True])])
    cache: dict[int, object] = {}
    hits = [matcher.match_prepared(p.template, p.message, cache) for p in prepared]  # type: ignore[arg-type]
    assert hits == [False, True]


def test_strict_drop_is_hubbles_unencrypted_traffic(builder: FlowBuilder) -> None:
    dropped = h.event(verdict=Verdict.DENIED, drop=DropReason.UNENCRYPTED)
    flow = builder.build(dropped)
    assert flow.verdict == pb.DROPPED
    assert flow.drop_reason_desc == pb.UNENCRYPTED_TRAFFIC


def test_ring_buffer_record_flag_decodes(builder: FlowBuilder) -> None:
    record = EventRecord(type=1, verdict=1, direction=1, proto=6, flags=FLAG_ENCRYPTED, reason=0)
    record.saddr_net = struct.unpack("=I", bytes([10, 244, 1, 10]))[0]
    record.daddr_net = struct.unpack("=I", bytes([10, 244, 2, 10]))[0]
    event = decode(bytes(record))
    assert event.encrypted and not event.is_reply
    record.flags = 0
    record.reason = int(DropReason.UNENCRYPTED)
    assert decode(bytes(record)).drop_reason is DropReason.UNENCRYPTED
