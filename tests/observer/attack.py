"""A hostile HTTP/2 client for the limit tests: raw sockets, frames built with h2, replies read as frames.

What a gRPC library never sends (floods of resets and pings, partial prefaces, streams past the limit) is
built here with h2's client side and written straight to the socket; the server's answers are read as raw
HTTP/2 frames, so the tests see exactly what arrived (GOAWAY and its code, RST_STREAM and its code).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY, RST_STREAM, DATA, HEADERS, PING = 0x7, 0x3, 0x0, 0x1, 0x6
_HEAD = struct.Struct(">HBBBI")  # length (24 bits as 16+8), type, flags, stream id


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def error_code(self) -> int:
        """GOAWAY's or RST_STREAM's error code."""
        if self.type == GOAWAY:
            return int(struct.unpack_from(">I", self.payload, 4)[0])
        return int(struct.unpack_from(">I", self.payload, 0)[0])


def frames(data: bytes) -> Iterator[Frame]:
    pos = 0
    while len(data) - pos >= 9:
        hi, lo, ftype, flags, sid = _HEAD.unpack_from(data, pos)
        length = (hi << 8) | lo
        if len(data) - pos - 9 < length:
            return
        yield Frame(ftype, flags, sid & 0x7FFFFFFF, data[pos + 9 : pos + 9 + length])
        pos += 9 + length


def grpc_body(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def request_headers(path: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


class Attacker:
    """One raw connection: frames are prepared with h2 (client side) and sent when asked."""

    def __init__(self, where: Path | tuple[str, int], *, window: int = 65535, preface: bool = True) -> None:
        family = socket.AF_UNIX if isinstance(where, Path) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        end = time.monotonic() + 10
        while True:
            try:
                self.sock.connect(str(where) if isinstance(where, Path) else where)
                break
            except BlockingIOError:  # a Unix listener's backlog is full: the server is accepting
                if time.monotonic() > end:
                    raise
                time.sleep(0.005)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.received = b""
        self._decoded = 0  # bytes of `received` already given to h2
        self.closed = False
        if preface:
            self.h2.initiate_connection()
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
            # Refused at once (too many connections): what it was told is still readable.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send()

    def send(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def open_stream(self, path: bytes, body: bytes, *, end: bool = True) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, request_headers(path))
        self.h2.send_data(sid, body, end_stream=end)
        return sid

    def read_until_closed(self, timeout: float = 15.0) -> list[Frame]:
        """Everything the server sends until it closes the connection (or `timeout` passes: then the
        test fails on what is missing)."""
        end = time.monotonic() + timeout
        chunks = [self.received]
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                break
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                self.received = b"".join(chunks)
                self.closed = True
                return list(frames(self.received))
            chunks.append(data)
        self.received = b"".join(chunks)
        self.closed = False
        return list(frames(self.received))

    def read_for(self, seconds: float) -> list[Frame]:
        """What the server sends within `seconds` (the connection may stay open)."""
        end = time.monotonic() + seconds
        chunks = [self.received]
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
        self.received = b"".join(chunks)
        return list(frames(self.received))

    def events(self) -> list[h2.events.Event]:
        """What arrived so far, decoded by the client side (reads whatever is waiting first)."""
        self.read_for(0.2)
        fresh = self.received[self._decoded :]
        self._decoded = len(self.received)
        return list(self.h2.receive_data(fresh)) if fresh else []

    def close(self) -> None:
        self.sock.close()


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
