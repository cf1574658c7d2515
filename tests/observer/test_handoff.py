"""The agent-to-front-process stream format (observer/handoff.py): what the front process writes to a client
must be byte for byte what the in-process server writes for the same query items."""

from __future__ import annotations

import socket
import threading

import pytest
from meshagent.observer import handoff
from meshagent.observer.grpcwire import Status, parse_messages
from meshagent.observer.handoff import FlowPacker, FlowUnpacker, FrameReader, ProtocolError
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.query import LostNotice, QueryItem
from meshagent.observer.service import ObserverService

from tests.observer import helpers as h


def _items(n_extra: int = 0) -> tuple[ObserverService, list[QueryItem]]:
    pipeline = h.make_pipeline()
    events = h.sample_events() + [h.event(dport=1000 + i, sport=40000 + i) for i in range(n_extra)]
    pipeline.on_events(events)
    items: list[QueryItem] = list(pipeline.ring.snapshot())
    # A lost notice in the middle: order must survive the change of frame kind.
    items.insert(3, LostNotice(7))
    return ObserverService(pipeline), items


def _through(packer: FlowPacker, unpacker: FlowUnpacker, batches: list[list[QueryItem]]) -> bytes:
    reader_side, writer_side = socket.socketpair()
    out: list[bytes] = []
    with reader_side, writer_side:
        for batch in batches:
            writer_side.sendall(packer.pack(batch))
        writer_side.sendall(handoff.end_frame(Status.OK, ""))
        reader = FrameReader(reader_side, chunk=97)  # small reads: frames arrive in pieces
        while unpacker.ended is None:
            frames = reader.read(1.0)
            assert frames or not reader.eof, "the stream ended without END"
            out += [unpacker.feed(kind, payload) for kind, payload in frames]
    return b"".join(out)


def test_front_process_bytes_equal_in_process_bytes() -> None:
    service, items = _items(n_extra=50)
    expected = service._encode(items)
    packer = FlowPacker(service.node_tail, service.framed_other)
    got = _through(packer, FlowUnpacker(), [items[:5], items[5:6], items[6:]])
    assert got == expected
    responses = [opb.GetFlowsResponse.FromString(m) for m in parse_messages(got, max_size=1 << 20)]
    assert responses[3].lost_events.num_events_lost == 7
    assert all(r.node_name == "node-a" for r in responses)


def test_templates_are_sent_once_per_stream_and_forgotten_past_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, items = _items(n_extra=20)
    flows = [i for i in items if not isinstance(i, LostNotice)]
    packer = FlowPacker(service.node_tail, service.framed_other)
    first = packer.pack(flows)
    again = packer.pack(flows)
    kinds_first = _kinds(first)
    kinds_again = _kinds(again)
    assert handoff.TEMPLATE in kinds_first and handoff.TEMPLATE not in kinds_again
    # With room for only 2 templates, the packer tells the other end to forget before a third.
    monkeypatch.setattr(handoff, "MAX_TEMPLATES", 2)
    small = FlowPacker(service.node_tail, service.framed_other)
    assert handoff.FORGET in _kinds(small.pack(flows))
    got = _through(FlowPacker(service.node_tail, service.framed_other), FlowUnpacker(), [flows, flows])
    assert got == service._encode(flows + flows)


def _kinds(data: bytes) -> list[int]:
    kinds = []
    pos = 0
    while pos < len(data):
        length, kind = handoff.HEADER.unpack_from(data, pos)
        kinds.append(kind)
        pos += handoff.HEADER.size + length
    return kinds


def test_end_frame_carries_status() -> None:
    u = FlowUnpacker()
    payload = handoff.end_frame(Status.INVALID_ARGUMENT, "bad")[handoff.HEADER.size :]
    assert u.feed(handoff.END, payload) == b""
    assert u.ended == (Status.INVALID_ARGUMENT, "bad")


def test_broken_input_is_a_protocol_error() -> None:
    u = FlowUnpacker()
    record = handoff.RECORD.pack(1, 2, 999, 3, 4, 0, 0)
    with pytest.raises(ProtocolError, match="template 999"):
        u.feed(handoff.FLOWS, record)
    with pytest.raises(ProtocolError, match="multiple"):
        u.feed(handoff.FLOWS, record[:-1])
    a, b = socket.socketpair()
    with a, b:
        b.sendall(handoff.HEADER.pack(5, 99) + b"hello")
        with pytest.raises(ProtocolError, match="bad frame header"):
            FrameReader(a).read(1.0)


def test_reader_reports_the_end_of_the_socket() -> None:
    a, b = socket.socketpair()
    with a:
        reader = FrameReader(a)
        threading.Timer(0.05, b.close).start()
        frames = reader.read(2.0)
        assert frames == [] and reader.eof
