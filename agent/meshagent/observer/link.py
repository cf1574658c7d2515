"""The sockets between the agent and its front process: a SEQPACKET control socket carrying the
messages of ipc.py (with file descriptors), and a stream socket pair per GetFlows call whose request goes
first, length-prefixed. Both processes import this; it imports nothing of either side.
"""

from __future__ import annotations

import errno
import socket
import struct

from meshagent.observer.grpcwire import RpcError, Status
from meshagent.observer.h2server import StreamClosed
from meshagent.observer.ipc import Message, encode

CONTROL_MAX = 1 << 20  # largest control message (a GetFlows request with its filters, a unary response)
STREAM_BUFFER = 1 << 20  # socket buffer of a stream's pair: about 40k flow records in flight


def control_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        # A SEQPACKET message must fit the send buffer whole. Without CAP_NET_ADMIN the kernel caps the
        # size at twice net.core.wmem_max (about 416 KiB by default); send_control reports a bigger one.
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 2 * CONTROL_MAX)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * CONTROL_MAX)
    return a, b


SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux's number; Python names it from 3.12 on


def send_control(sock: socket.socket, message: Message, fds: list[int] | None = None) -> None:
    data = encode(message)
    too_big = RpcError(Status.RESOURCE_EXHAUSTED, f"a message of {len(data)} bytes is too large to pass on")
    if len(data) > CONTROL_MAX:
        raise too_big
    try:
        if fds:
            socket.send_fds(sock, [data], fds)
        else:
            sock.send(data)
    except OSError as err:
        if err.errno == errno.EMSGSIZE:
            raise too_big from err
        raise


def send_request(sock: socket.socket, request: bytes) -> None:
    """A GetFlows request goes on the stream's own socket (any size the server accepts)."""
    sock.sendall(_REQUEST_LEN.pack(len(request)) + request)


def recv_request(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    try:
        with sock.makefile("rb") as f:
            head = f.read(_REQUEST_LEN.size)
            if len(head) < _REQUEST_LEN.size:
                raise StreamClosed()
            (length,) = _REQUEST_LEN.unpack(head)
            request = f.read(length)
            if len(request) < length:
                raise StreamClosed()
    except (OSError, TimeoutError) as err:
        raise StreamClosed() from err
    finally:
        sock.settimeout(None)
    return request


_REQUEST_LEN = struct.Struct("<I")
