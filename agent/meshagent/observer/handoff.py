"""What a GetFlows stream looks like between the agent and its observer front process (frontproc.py).

The agent keeps the flow ring and answers queries; the front process speaks gRPC and HTTP/2 and turns
flows into GetFlowsResponse bytes. Between them, each stream has its own socket carrying frames, each a
header (payload length, kind) and a payload:

  NODE      the GetFlowsResponse.node_name field, encoded (first frame of a stream)
  TEMPLATE  template id, protocol, uuid prefix, the template's static encoding (observer/wire.py): sent
            once per stream before the first flow that uses the template
  FLOWS     fixed-size records, one per flow: time, uuid number, template id, ports, TCP flags, reply
  FORGET    the receiver drops its templates (the sender bounds what both hold)
  MESSAGES  gRPC-framed responses made by the agent (lost-event notices, flows not from the datapath)
  END       the stream's gRPC status (1 byte) and message (UTF-8): the last frame

A flow crosses as 26 bytes packed in the agent instead of a ~300-byte message encoded there: the encoding,
the HTTP/2 framing and the socket writes to clients run in the other process, on the other core.
"""

from __future__ import annotations

import itertools
import select
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from meshagent.observer.convert import PreparedFlow, Template
from meshagent.observer.grpcwire import Status, pack_prefix
from meshagent.observer.ipc import ControlProtocolError, decode_end, encode_end
from meshagent.observer.wire import response_bytes, static_wire

HEADER = struct.Struct("<IB")  # payload length, kind
NODE, TEMPLATE, FLOWS, FORGET, MESSAGES, END = range(1, 7)
KINDS = frozenset((NODE, TEMPLATE, FLOWS, FORGET, MESSAGES, END))
MAX_PAYLOAD = 64 << 20  # a frame longer than this is a broken peer, not data

RECORD = struct.Struct("<QQIHHBB")  # time_ns, uuid number, template id, sport, dport, tcp flags, reply
_TEMPLATE_HEAD = struct.Struct("<IB")  # template id, protocol; then uuid prefix length (1 byte), prefix
MAX_TEMPLATES = 4096  # templates a stream's two ends hold before FORGET (they are remade every second)

_template_ids = itertools.count(1).__next__  # C-level counter: safe to call from any thread


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


def end_frame(status: Status, message: str) -> bytes:
    return frame(END, encode_end(status, message))


class FlowPacker:
    """The agent's half of one stream: query items in, frames out (order kept)."""

    def __init__(self, node_tail: bytes, other: Callable[[Any], bytes]) -> None:
        self._other = other  # a non-datapath item (lost notice, built flow) -> gRPC-framed response
        self._sent: dict[Template, int] = {}  # templates the front process holds, by their id
        self._head = frame(NODE, node_tail)

    def pack(self, items: Sequence[Any]) -> bytes:
        out: list[bytes] = []
        if self._head:
            out.append(self._head)
            self._head = b""
        records: list[bytes] = []
        messages: list[bytes] = []
        sent = self._sent
        rec = RECORD.pack
        for item in items:
            if type(item) is not PreparedFlow:
                if records:
                    out.append(frame(FLOWS, b"".join(records)))
                    records = []
                messages.append(self._other(item))
                continue
            if messages:
                out.append(frame(MESSAGES, b"".join(messages)))
                messages = []
            prepared = item
            shared = prepared.shared
            tid = sent.get(shared)
            if tid is None:
                if records:
                    out.append(frame(FLOWS, b"".join(records)))
                    records = []
                if len(sent) >= MAX_TEMPLATES:
                    out.append(frame(FORGET, b""))
                    sent.clear()
                tid = sent[shared] = _template_ids()
                out.append(_template_frame(tid, shared, prepared.ids.prefix_bytes))
            ev = prepared.event
            records.append(
                rec(prepared.time_ns, prepared.number, tid, ev.sport, ev.dport, ev.tcp_flags, ev.is_reply)
            )
        if records:
            out.append(frame(FLOWS, b"".join(records)))
        if messages:
            out.append(frame(MESSAGES, b"".join(messages)))
        return b"".join(out)


def _template_frame(tid: int, shared: Template, uuid_prefix: bytes) -> bytes:
    head = _TEMPLATE_HEAD.pack(tid, shared.protocol) + bytes((len(uuid_prefix),)) + uuid_prefix
    return frame(TEMPLATE, head + static_wire(shared))


class ProtocolError(Exception):
    """The agent sent something this end cannot read."""


class FlowUnpacker:
    """The front process's half of one stream: frames in, gRPC-framed GetFlowsResponses out."""

    def __init__(self) -> None:
        self._node_tail = b""
        self._templates: dict[int, tuple[bytes, int, bytes]] = {}  # id -> static, protocol, uuid prefix
        self.ended: tuple[Status, str] | None = None

    def feed(self, kind: int, payload: bytes | memoryview) -> bytes:
        """The framed responses a frame yields (b"" for one that only sets state)."""
        if kind == FLOWS:
            return self._flows(payload)
        if kind == MESSAGES:
            return bytes(payload)
        if kind == TEMPLATE:
            try:
                tid, proto = _TEMPLATE_HEAD.unpack_from(payload)
                n = payload[_TEMPLATE_HEAD.size]
            except (struct.error, IndexError):
                raise ProtocolError(f"template frame of {len(payload)} bytes") from None
            start = _TEMPLATE_HEAD.size + 1
            if len(payload) < start + n:
                raise ProtocolError(f"template frame of {len(payload)} bytes, prefix of {n}")
            prefix = bytes(payload[start : start + n])
            self._templates[tid] = (bytes(payload[start + n :]), proto, prefix)
        elif kind == NODE:
            self._node_tail = bytes(payload)
        elif kind == FORGET:
            self._templates.clear()
        elif kind == END:
            try:
                self.ended = decode_end(payload)
            except ControlProtocolError as err:
                raise ProtocolError(str(err)) from None
        else:
            raise ProtocolError(f"unknown frame kind {kind}")
        return b""

    def _flows(self, payload: bytes | memoryview) -> bytes:
        if len(payload) % RECORD.size:
            raise ProtocolError(f"flow records of {len(payload)} bytes: not a multiple of {RECORD.size}")
        templates = self._templates
        tail = self._node_tail
        head = pack_prefix
        parts: list[bytes] = []
        add = parts.append
        for time_ns, number, tid, sport, dport, flags, reply in RECORD.iter_unpack(payload):
            try:
                static, proto, prefix = templates[tid]
            except KeyError:
                raise ProtocolError(f"flow of template {tid}, which was not sent") from None
            msg = response_bytes(static, proto, time_ns, prefix, number, sport, dport, flags, reply, tail)
            add(head(0, len(msg)))
            add(msg)
        return b"".join(parts)


class FrameReader:
    """Reads whole frames from a stream socket (blocking, with a timeout per wait)."""

    def __init__(self, sock: socket.socket, chunk: int = 1 << 20) -> None:
        self._sock = sock
        self._chunk = chunk
        self._buf = bytearray()
        self.eof = False

    def read(self, timeout: float) -> list[tuple[int, bytes]]:
        """The frames complete after at most `timeout` seconds of waiting ([] if none; check `eof`)."""
        if not self.eof:
            ready, _, _ = select.select([self._sock], [], [], timeout)
            if ready:
                try:
                    data = self._sock.recv(self._chunk)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                if data:
                    self._buf += data
                else:
                    self.eof = True
        return self._split()

    def _split(self) -> list[tuple[int, bytes]]:
        buf = self._buf
        out: list[tuple[int, bytes]] = []
        pos = 0
        size = HEADER.size
        while len(buf) - pos >= size:
            length, kind = HEADER.unpack_from(buf, pos)
            if kind not in KINDS or length > MAX_PAYLOAD:
                raise ProtocolError(f"bad frame header: kind {kind}, length {length}")
            if len(buf) - pos - size < length:
                break
            out.append((kind, bytes(buf[pos + size : pos + size + length])))
            pos += size + length
        if pos:
            del buf[:pos]
        return out
