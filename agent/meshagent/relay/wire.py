"""What the relay reads from the GetFlowsResponse bytes it passes on: their time, without decoding them.

The relay forwards each node's responses as they came (no decode and re-encode per flow); to merge the
streams in time order it only needs `GetFlowsResponse.time`, or the flow's own time when a server leaves
the response's out. Both are found by walking the top-level fields.
"""

from __future__ import annotations

import time

from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.relay import relay_pb2 as rpb

_RESPONSE_FIELDS = opb.GetFlowsResponse.DESCRIPTOR.fields_by_name
_TIME = _RESPONSE_FIELDS["time"].number
_FLOW = _RESPONSE_FIELDS["flow"].number
_FLOW_TIME = pb.Flow.DESCRIPTOR.fields_by_name["time"].number
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _fields(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Length-delimited fields of one message level: number -> (start, end) of the value (last wins)."""
    found: dict[int, tuple[int, int]] = {}
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            _, pos = _varint(data, pos)
        elif wire_type == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise WireError("field runs past its message")
            found[number] = (pos, pos + length)
            pos += length
        elif wire_type == _I64:
            pos += 8
        elif wire_type == _I32:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")
    if pos != end:
        raise WireError("field runs past its message")
    return found


def _timestamp_ns(data: bytes, start: int, end: int) -> int:
    seconds = nanos = 0
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        if key & 7 != _VARINT:
            raise WireError("a Timestamp has only varint fields")
        value, pos = _varint(data, pos)
        if key >> 3 == 1:
            seconds = value
        elif key >> 3 == 2:
            nanos = value
    return seconds * 1_000_000_000 + nanos


def response_time_ns(raw: bytes) -> int:
    """The time of a serialized GetFlowsResponse: its `time`, else its flow's `time`; 0 if neither."""
    fields = _fields(raw, 0, len(raw))
    where = fields.get(_TIME)
    if where is not None:
        return _timestamp_ns(raw, *where)
    flow = fields.get(_FLOW)
    if flow is not None:
        inner = _fields(raw, *flow).get(_FLOW_TIME)
        if inner is not None:
            return _timestamp_ns(raw, *inner)
    return 0


def is_flow(raw: bytes) -> bool:
    return _FLOW in _fields(raw, 0, len(raw))


def node_status(state: rpb.NodeState, names: list[str], message: str = "") -> bytes:
    """A serialized GetFlowsResponse telling the client how some nodes are doing."""
    resp = opb.GetFlowsResponse(
        node_status=rpb.NodeStatusEvent(state_change=state, node_names=sorted(names), message=message)
    )
    resp.time.FromNanoseconds(time.time_ns())
    return resp.SerializeToString()
