"""The control messages between the agent and its observer front process: a fixed binary format.

Each message is one SOCK_SEQPACKET datagram: a kind byte, then the kind's fields in a fixed order
(little-endian integers and doubles; text and bytes prefixed with their length). Decoding is strict: an
unknown kind, a field out of range, text that is not UTF-8, a length past the end, bytes left over or a
wrong number of passed descriptors is a ControlProtocolError, never a guess. No pickle: the front process
faces the network, and what it sends must not be able to run code in the agent.

  UNARY   front -> agent  call id, deadline, path, peer, request
  STREAM  front -> agent  deadline, path, peer (one descriptor: the stream's socket)
  RESULT  agent -> front  call id, status, message, response
  STOP    agent -> front  grace seconds
  READY   front -> agent  bound TCP port (0: none)
  ERROR   front -> agent  why it could not start
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from meshagent.observer.grpcwire import Status

UNARY, STREAM, RESULT, STOP, READY, ERROR = range(1, 7)

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
MAX_TEXT = 1 << 16  # paths, peers, status messages


class ControlProtocolError(Exception):
    """A control message this side cannot read: the link is broken, not the call."""


@dataclass(frozen=True)
class Unary:
    call_id: int
    deadline: float | None
    path: str
    peer: str
    request: bytes


@dataclass(frozen=True)
class StreamCall:
    deadline: float | None
    path: str
    peer: str


@dataclass(frozen=True)
class Result:
    call_id: int
    status: Status
    message: str
    response: bytes


@dataclass(frozen=True)
class Stop:
    grace: float


@dataclass(frozen=True)
class Ready:
    tcp_port: int | None


@dataclass(frozen=True)
class StartError:
    reason: str


Message = Unary | StreamCall | Result | Stop | Ready | StartError


class _Writer:
    def __init__(self, kind: int) -> None:
        self.parts = [_U8.pack(kind)]

    def u8(self, v: int) -> _Writer:
        self.parts.append(_U8.pack(v))
        return self

    def u32(self, v: int) -> _Writer:
        self.parts.append(_U32.pack(v))
        return self

    def u64(self, v: int) -> _Writer:
        self.parts.append(_U64.pack(v))
        return self

    def deadline(self, v: float | None) -> _Writer:
        self.parts.append(_U8.pack(v is not None) + _F64.pack(0.0 if v is None else v))
        return self

    def f64(self, v: float) -> _Writer:
        self.parts.append(_F64.pack(v))
        return self

    def text(self, v: str) -> _Writer:
        data = v.encode("utf-8", "replace")[: MAX_TEXT - 1]
        self.parts.append(_U16.pack(len(data)) + data)
        return self

    def blob(self, v: bytes) -> _Writer:
        self.parts.append(_U32.pack(len(v)) + v)
        return self

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def encode(message: Message) -> bytes:
    m = message
    if isinstance(m, Unary):
        return (
            _Writer(UNARY)
            .u64(m.call_id)
            .deadline(m.deadline)
            .text(m.path)
            .text(m.peer)
            .blob(m.request)
            .bytes()
        )
    if isinstance(m, StreamCall):
        return _Writer(STREAM).deadline(m.deadline).text(m.path).text(m.peer).bytes()
    if isinstance(m, Result):
        return _Writer(RESULT).u64(m.call_id).u8(int(m.status)).text(m.message).blob(m.response).bytes()
    if isinstance(m, Stop):
        return _Writer(STOP).f64(m.grace).bytes()
    if isinstance(m, Ready):
        return _Writer(READY).u32(m.tcp_port or 0).bytes()
    if isinstance(m, StartError):
        return _Writer(ERROR).text(m.reason).bytes()
    raise TypeError(f"not a control message: {m!r}")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._data):
            raise ControlProtocolError(f"message truncated at byte {self._pos} (wanted {n} more)")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def _fixed(self, s: struct.Struct) -> int | float:
        value: int | float = s.unpack(self._take(s.size))[0]
        return value

    def u8(self) -> int:
        return int(self._fixed(_U8))

    def u32(self) -> int:
        return int(self._fixed(_U32))

    def u64(self) -> int:
        return int(self._fixed(_U64))

    def f64(self) -> float:
        value = float(self._fixed(_F64))
        if not math.isfinite(value) or value < 0:
            raise ControlProtocolError(f"a time of {value} seconds")
        return value

    def deadline(self) -> float | None:
        has = self.u8()
        if has > 1:
            raise ControlProtocolError(f"deadline flag {has}")
        value = self.f64()
        return value if has else None

    def text(self) -> str:
        data = self._take(int(self._fixed(_U16)))
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ControlProtocolError(f"text that is not UTF-8: {err}") from None

    def blob(self) -> bytes:
        return bytes(self._take(self.u32()))

    def status(self) -> Status:
        value = self.u8()
        try:
            return Status(value)
        except ValueError:
            raise ControlProtocolError(f"gRPC status {value}") from None

    def end(self) -> None:
        if self._pos != len(self._data):
            raise ControlProtocolError(f"{len(self._data) - self._pos} bytes after the message")


def decode(data: bytes, fds: int = 0) -> Message:
    """The message in `data` (received with `fds` descriptors); ControlProtocolError if malformed."""
    if not data:
        raise ControlProtocolError("an empty message")
    r = _Reader(data)
    kind = r.u8()
    message: Message
    if kind == UNARY:
        message = Unary(r.u64(), r.deadline(), r.text(), r.text(), r.blob())
    elif kind == STREAM:
        message = StreamCall(r.deadline(), r.text(), r.text())
    elif kind == RESULT:
        message = Result(r.u64(), r.status(), r.text(), r.blob())
    elif kind == STOP:
        message = Stop(r.f64())
    elif kind == READY:
        port = r.u32()
        if port > 65535:
            raise ControlProtocolError(f"TCP port {port}")
        message = Ready(port or None)
    elif kind == ERROR:
        message = StartError(r.text())
    else:
        raise ControlProtocolError(f"unknown message kind {kind}")
    r.end()
    wanted = 1 if kind == STREAM else 0
    if fds != wanted:
        raise ControlProtocolError(f"{fds} descriptors with a message of kind {kind} (wanted {wanted})")
    return message


END_HEAD = struct.Struct("<B")


def encode_end(status: Status, message: str) -> bytes:
    """The payload of a stream's END frame (handoff.py): its gRPC status and message."""
    return END_HEAD.pack(int(status)) + message.encode("utf-8", "replace")


def decode_end(payload: bytes | memoryview) -> tuple[Status, str]:
    r = _Reader(bytes(payload))
    status = r.status()
    try:
        text = bytes(payload[END_HEAD.size :]).decode("utf-8")
    except UnicodeDecodeError as err:
        raise ControlProtocolError(f"END message that is not UTF-8: {err}") from None
    return status, text
