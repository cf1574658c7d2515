"""GetFlows responses encoded straight from prepared flows, without building a flow.Flow per flow.

A flow's message is its template's (what the enricher contributed: the same for a whole conversation) plus a
few fields that differ per flow: time, uuid, ports, TCP flags and Summary, reply. The template part is
serialized once per template with those fields removed; each flow appends its own, encoded here by hand.
Protobuf parsers accept fields in any order, so the bytes parse to the same message as the full flow's
serialization (tests/observer/test_wire.py checks that over many kinds of flows). Every field number below is
read from the generated descriptors, not written down.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import timestamp_pb2, wrappers_pb2
from google.protobuf.message import Message

from meshagent.observer.convert import (
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_SUMMARIES,
    PreparedFlow,
    Template,
)
from meshagent.observer.grpcwire import frame, pack_prefix
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb

_VARINT, _LEN = 0, 2  # wire types


def varint(n: int) -> bytes:
    """Base-128 varint of a non-negative int (callers turn negative int64 into two's complement)."""
    # Unrolled up to 5 bytes (every length, port and Timestamp.nanos): a loop costs twice as much.
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    if n < 0x800000000:
        return bytes(
            (n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21 & 0x7F | 0x80, n >> 28)
        )
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]  # one-byte varints: lengths of short fields


def _tag(message: type[Message], name: str, wire_type: int) -> bytes:
    return varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | wire_type)


_FLOW = pb.Flow
_TAG_TIME = _tag(_FLOW, "time", _LEN)
_TAG_UUID = _tag(_FLOW, "uuid", _LEN)
_TAG_L4 = _tag(_FLOW, "l4", _LEN)
_TAG_SUMMARY = _tag(_FLOW, "Summary", _LEN)
_TAG_SECONDS = _tag(timestamp_pb2.Timestamp, "seconds", _VARINT)
_TAG_NANOS = _tag(timestamp_pb2.Timestamp, "nanos", _VARINT)
_RESPONSE = opb.GetFlowsResponse
_TAG_RESPONSE_FLOW = _tag(_RESPONSE, "flow", _LEN)
_TAG_RESPONSE_NODE = _tag(_RESPONSE, "node_name", _LEN)
_TAG_RESPONSE_TIME = _tag(_RESPONSE, "time", _LEN)

# is_reply is always present (the template sets it to false: an empty BoolValue); `reply` only when true.
_BOOL_TRUE = _tag(wrappers_pb2.BoolValue, "value", _VARINT) + b"\x01"
_REPLY_FIELDS = (
    _tag(_FLOW, "is_reply", _LEN) + b"\x00",
    _tag(_FLOW, "is_reply", _LEN)
    + varint(len(_BOOL_TRUE))
    + _BOOL_TRUE
    + _tag(_FLOW, "reply", _VARINT)
    + b"\x01",
)

# TCP, UDP and SCTP share the port field numbers; checked here so the shared tables below stay right.
_PORT_FIELDS = ("source_port", "destination_port")
assert all(
    [d.fields_by_name[n].number for n in _PORT_FIELDS] == [1, 2]
    for d in (pb.TCP.DESCRIPTOR, pb.UDP.DESCRIPTOR, pb.SCTP.DESCRIPTOR)
)
_TAG_SPORT = _tag(pb.TCP, "source_port", _VARINT)
_TAG_DPORT = _tag(pb.TCP, "destination_port", _VARINT)


def _l4_heads(layer: str) -> list[bytes]:
    """By the length n of the protocol message's body: Flow.l4 { <layer> { ...n bytes } } up to the body."""
    inner = _tag(pb.Layer4, layer, _LEN)
    return [_TAG_L4 + varint(len(inner) + 1 + n) + inner + _SMALL[n] for n in range(0x70)]


_L4_TCP = _l4_heads("TCP")
_L4_UDP = _l4_heads("UDP")
_L4_SCTP = _l4_heads("SCTP")


def _tcp_flags_field(bits: int) -> bytes:
    # TCPFlags is present even with no bit set (as in the materialized flow).
    tag = _tag(pb.TCP, "flags", _LEN)
    names = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
    body = b"".join(_tag(pb.TCPFlags, n, _VARINT) + b"\x01" for i, n in enumerate(names) if bits >> i & 1)
    return tag + varint(len(body)) + body


def _string_field(tag: bytes, text: str) -> bytes:
    raw = text.encode()
    return tag + varint(len(raw)) + raw


_TCP_FLAGS = [_tcp_flags_field(b) for b in range(256)]
_TCP_SUMMARY = [_string_field(_TAG_SUMMARY, s) for s in TCP_SUMMARIES]

# Port fields by port number, filled on first use (a full table would be ~3 MB of mostly unused ports).
_SPORTS: list[bytes | None] = [None] * 0x10000
_DPORTS: list[bytes | None] = [None] * 0x10000
_SPORTS[0] = _DPORTS[0] = b""  # proto3: a zero port is not on the wire


def _port_field(table: list[bytes | None], tag: bytes, port: int) -> bytes:
    field = tag + varint(port)
    table[port] = field
    return field


# Timestamp.seconds changes once a second: its encoding is kept for the few most recent values.
_SECONDS: dict[int, bytes] = {}


def _seconds_field(seconds: int) -> bytes:
    field = _TAG_SECONDS + varint(seconds & 0xFFFF_FFFF_FFFF_FFFF) if seconds else b""
    if len(_SECONDS) >= 64:
        _SECONDS.clear()
    _SECONDS[seconds] = field
    return field


# The fields appended per flow, cleared from the template's own encoding (l4 and Summary only where they
# vary: ICMP's and other protocols' stay with the template).
_PER_FLOW_FIELDS = ("time", "uuid", "is_reply", "reply")
_WITH_PORTS = frozenset((PROTO_TCP, PROTO_UDP, PROTO_SCTP))


def _static_part(template: pb.Flow, protocol: int) -> bytes:
    f = pb.Flow()
    f.CopyFrom(template)
    for name in _PER_FLOW_FIELDS:
        f.ClearField(name)
    if protocol in _WITH_PORTS:
        f.ClearField("l4")
    if protocol == PROTO_TCP:
        f.ClearField("Summary")
    return f.SerializeToString()


def node_name_field(node_name: str) -> bytes:
    """GetFlowsResponse.node_name, encoded: the `node_tail` argument below (empty for no name)."""
    return _string_field(_TAG_RESPONSE_NODE, node_name) if node_name else b""


def static_wire(shared: Template) -> bytes:
    """The template's encoding without the per-flow fields (made once per template, then kept on it)."""
    static = shared.static_wire
    if static is None:
        # Two threads may both get here; they make the same bytes.
        static = shared.static_wire = _static_part(shared.flow, shared.protocol)
    return static


def flow_response_bytes(prepared: PreparedFlow, node_tail: bytes) -> bytes:
    """GetFlowsResponse{flow, node_name, time} for one prepared flow, serialized; `node_tail` is
    `node_name_field(node)`. Parses to the same message as one built from `prepared.message()`."""
    shared = prepared.shared
    static = shared.static_wire
    if static is None:
        static = static_wire(shared)
    ev = prepared.event
    return response_bytes(
        static,
        shared.protocol,
        prepared.time_ns,
        prepared.ids.prefix_bytes,
        prepared.number,
        ev.sport,
        ev.dport,
        ev.tcp_flags,
        ev.is_reply,
        node_tail,
    )


def response_bytes(
    static: bytes,
    proto: int,
    time_ns: int,
    uuid_prefix: bytes,
    uuid_number: int,
    sport: int,
    dport: int,
    tcp_flags: int,
    is_reply: bool | int,
    node_tail: bytes,
) -> bytes:
    """A GetFlowsResponse from a template's `static_wire` and one flow's own fields: the encoder that both
    the in-process server and the front process (observer/handoff.py) use."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    ts = _SECONDS.get(seconds)
    if ts is None:
        ts = _seconds_field(seconds)
    if nanos:
        ts += _TAG_NANOS + varint(nanos)
    ts_len = _SMALL[len(ts)]
    uuid_text = b"%012x" % uuid_number  # with uuid_prefix: the text of UuidSource.text, made without a str

    if proto in _WITH_PORTS:
        sp = _SPORTS[sport]
        if sp is None:
            sp = _port_field(_SPORTS, _TAG_SPORT, sport)
        dp = _DPORTS[dport]
        if dp is None:
            dp = _port_field(_DPORTS, _TAG_DPORT, dport)
        if proto == PROTO_TCP:
            fl = _TCP_FLAGS[tcp_flags]
            l4 = b"".join((_L4_TCP[len(sp) + len(dp) + len(fl)], sp, dp, fl, _TCP_SUMMARY[tcp_flags]))
        else:
            l4 = b"".join(((_L4_UDP if proto == PROTO_UDP else _L4_SCTP)[len(sp) + len(dp)], sp, dp))
    else:
        l4 = b""  # constant per template: in `static`

    body = b"".join(
        (
            static,
            _TAG_TIME,
            ts_len,
            ts,
            _TAG_UUID,
            _SMALL[len(uuid_prefix) + len(uuid_text)],
            uuid_prefix,
            uuid_text,
            l4,
            _REPLY_FIELDS[is_reply],
        )
    )
    return b"".join((_TAG_RESPONSE_FLOW, varint(len(body)), body, node_tail, _TAG_RESPONSE_TIME, ts_len, ts))


def encode_flow_response(flow: pb.Flow, node_tail: bytes) -> bytes:
    """GetFlowsResponse{flow, node_name, time} for a built flow (not from the datapath): the flow's own
    serialization, without copying it into a wrapper message."""
    body = flow.SerializeToString()
    ts = flow.time.SerializeToString()
    return b"".join(
        (_TAG_RESPONSE_FLOW, varint(len(body)), body, node_tail, _TAG_RESPONSE_TIME, varint(len(ts)), ts)
    )


grpc_frame = frame  # a gRPC length-prefixed message (grpcwire.frame)


def frames_for(prepared: Iterable[PreparedFlow], node_tail: bytes) -> bytes:
    """The framed GetFlowsResponse of each flow, concatenated: one write for many messages."""
    parts: list[bytes] = []
    add = parts.append
    head = pack_prefix
    for p in prepared:
        msg = flow_response_bytes(p, node_tail)
        add(head(0, len(msg)))
        add(msg)
    return b"".join(parts)
