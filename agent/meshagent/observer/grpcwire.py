"""gRPC over HTTP/2, the protocol facts our server needs: status codes, message framing, headers, deadlines.

The observer speaks gRPC itself (observer/h2server.py) rather than through grpcio's server, because the
flow stream has to carry one GetFlowsResponse per flow at 100k flows/s: grpcio's Python server pays a
thread round trip per message (60 µs and more here), while writing many length-prefixed messages into each
HTTP/2 DATA frame costs well under a microsecond per message. The wire format is gRPC's own, so every gRPC
client (grpcio, grpc-go as in the hubble CLI) talks to it unchanged.
"""

from __future__ import annotations

import enum
import re
import struct
from urllib.parse import quote

_PREFIX = struct.Struct(">BI")  # compressed flag, message length (big-endian)
PREFIX_SIZE = _PREFIX.size
pack_prefix = _PREFIX.pack  # (0, length): the prefix of an uncompressed message, for callers that batch

CONTENT_TYPE = b"application/grpc"


class Status(enum.IntEnum):
    """gRPC status codes (the numbers are fixed by the protocol)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """Raised by a handler to end its call with a non-OK status and a message for the client."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def frame(message: bytes) -> bytes:
    """One uncompressed length-prefixed message, as it travels in DATA frames."""
    return _PREFIX.pack(0, len(message)) + message


def parse_messages(body: bytes, *, max_size: int) -> list[bytes]:
    """Splits a request body into its messages. Raises RpcError on compression, truncation or size."""
    out: list[bytes] = []
    pos = 0
    while pos < len(body):
        if len(body) - pos < PREFIX_SIZE:
            raise RpcError(Status.INTERNAL, "truncated gRPC message prefix")
        compressed, size = _PREFIX.unpack_from(body, pos)
        pos += PREFIX_SIZE
        if compressed:
            # We advertise no compression (grpc-accept-encoding: identity), so a client must not send any.
            raise RpcError(Status.UNIMPLEMENTED, "compressed requests are not supported")
        if size > max_size:
            raise RpcError(
                Status.RESOURCE_EXHAUSTED, f"request message of {size} bytes exceeds the {max_size} limit"
            )
        if len(body) - pos < size:
            raise RpcError(Status.INTERNAL, "truncated gRPC message")
        out.append(body[pos : pos + size])
        pos += size
    return out


_TIMEOUT = re.compile(rb"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """The grpc-timeout header in seconds (None when malformed: the call then runs without a deadline)."""
    m = _TIMEOUT.match(value)
    if m is None:
        return None
    return int(m.group(1)) * _TIMEOUT_UNITS[m.group(2)]


_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != ord("%"))


def encode_message(text: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (printable ASCII other than '%' travels as is)."""
    return quote(text, safe=_MESSAGE_SAFE).encode()


def response_headers() -> list[tuple[bytes, bytes]]:
    return [(b":status", b"200"), (b"content-type", CONTENT_TYPE), (b"grpc-accept-encoding", b"identity")]


def trailers(status: Status, message: str = "") -> list[tuple[bytes, bytes]]:
    out = [(b"grpc-status", str(int(status)).encode())]
    if message:
        out.append((b"grpc-message", encode_message(message)))
    return out


def trailers_only(status: Status, message: str = "") -> list[tuple[bytes, bytes]]:
    """A call that fails before any message: one HEADERS frame carrying both the headers and the status."""
    return [(b":status", b"200"), (b"content-type", CONTENT_TYPE), *trailers(status, message)]
