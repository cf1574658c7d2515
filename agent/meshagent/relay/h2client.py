"""A GetFlows call on its own HTTP/2 connection (h2, sans-IO, blocking socket), yielding each serialized
response as bytes.

Why not grpcio's client: measured here, a grpcio stream hands Python about 30k messages a second (one
completion per message), a fifth of what one agent serves; the relay reads every node's flows through
such streams. Here one socket read brings many DATA frames and their messages are cut out in one pass,
so the relay reads several times faster (bench/relay_throughput.py). The unary calls stay on grpcio.

A quiet stream (a follower waiting for flows) is checked with HTTP/2 PINGs: no answer within the
keepalive interval ends the call, so a node that vanished without closing its connections is noticed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import urllib.parse
from collections import deque

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from meshagent.observer.client import ClientTls
from meshagent.observer.grpcwire import Status, frame

_PREFIX = struct.Struct(">BI")
WINDOW = 16 * 1024 * 1024  # receive window: a whole batch of flows in flight, no stall per frame
MAX_MESSAGE = 16 * 1024 * 1024


class FlowCallError(Exception):
    """The call failed: a gRPC status other than OK, or the connection broke."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def _connect(target: str, tls: ClientTls | None, timeout_s: float) -> tuple[socket.socket, bytes]:
    """A connected socket (TLS with ALPN h2 when asked) and the :authority to send."""
    try:
        if target.startswith("unix:"):
            path = target.removeprefix("unix://") if target.startswith("unix://") else target[5:]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout_s)
            sock.connect(path)
            authority = b"localhost"
        else:
            host, _, port = target.rpartition(":")
            host = host.strip("[]")
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            authority = target.encode()
        if tls is not None:
            context = ssl.create_default_context(cafile=str(tls.ca_file))
            context.set_alpn_protocols(["h2"])
            if tls.cert_file is not None:
                context.load_cert_chain(tls.cert_file, tls.key_file)
            server_name = tls.server_name or (None if target.startswith("unix:") else host)
            sock = context.wrap_socket(sock, server_hostname=server_name)
            if sock.selected_alpn_protocol() != "h2":
                sock.close()
                raise FlowCallError("UNAVAILABLE", "the server did not agree to HTTP/2 (ALPN)")
    except (OSError, ValueError) as err:
        raise FlowCallError("UNAVAILABLE", f"cannot connect to {target}: {err}") from err
    return sock, authority


class H2FlowCall:
    """Iterate for the serialized GetFlowsResponse messages; cancel() from another thread ends it."""

    def __init__(
        self,
        target: str,
        path: str,
        request: bytes,
        *,
        tls: ClientTls | None,
        connect_timeout_s: float,
        read_timeout_s: float | None,
        keepalive_s: float = 10.0,
    ) -> None:
        self._sock, authority = _connect(target, tls, connect_timeout_s)
        self._read_timeout_s = read_timeout_s
        self._keepalive_s = keepalive_s
        self._cancelled = False
        self._pending: deque[bytes] = deque()
        self._buffer = bytearray()
        self._done = False
        self._conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn = self._conn
        conn.initiate_connection()
        conn.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20,
            }
        )
        conn.increment_flow_control_window(WINDOW - 65535)
        self._stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            self._stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"https" if tls is not None else b"http"),
                (b":path", path.encode()),
                (b":authority", authority),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"user-agent", b"meshagent-relay"),
            ],
        )
        self._sock.settimeout(connect_timeout_s)
        self._send_request(frame(request))
        self._sock.settimeout(read_timeout_s if read_timeout_s is not None else keepalive_s)

    def _send_request(self, body: bytes) -> None:
        """The request under HTTP/2 flow control: a large one (hundreds of filters) waits for the server's
        WINDOW_UPDATEs between chunks."""
        conn, sent = self._conn, 0
        while True:
            window = min(conn.local_flow_control_window(self._stream_id), conn.max_outbound_frame_size)
            chunk = body[sent : sent + window]
            last = sent + len(chunk) == len(body)
            if chunk or last:
                conn.send_data(self._stream_id, chunk, end_stream=last)
                sent += len(chunk)
            self._flush()
            if last:
                return
            if window == 0:
                try:
                    data = self._sock.recv(65536)
                except OSError as err:
                    self.close()
                    raise FlowCallError("UNAVAILABLE", f"connection lost while sending: {err}") from err
                if not data:
                    self.close()
                    raise FlowCallError("UNAVAILABLE", "connection closed while sending the request")
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                        self.close()
                        raise FlowCallError("UNAVAILABLE", "the node refused the request")
                    if isinstance(event, h2.events.DataReceived):
                        self._buffer += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out:
            self._sock.sendall(out)

    def cancel(self) -> bool:
        self._cancelled = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        return True

    def close(self) -> None:
        self._sock.close()

    def __iter__(self) -> H2FlowCall:
        return self

    def __next__(self) -> bytes:
        while not self._pending:
            if self._done:
                self.close()
                raise StopIteration
            self._read()
        return self._pending.popleft()

    def _read(self) -> None:
        awaiting_ping = False
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError as err:
                if self._read_timeout_s is not None or awaiting_ping:
                    self.close()
                    raise FlowCallError("DEADLINE_EXCEEDED", "the node stopped answering") from err
                awaiting_ping = True
                self._conn.ping(b"relay-ka")
                self._flush()
                continue
            except OSError as err:
                self.close()
                if self._cancelled:
                    raise FlowCallError("CANCELLED", "cancelled") from err
                raise FlowCallError("UNAVAILABLE", f"connection lost: {err}") from err
            if not data:
                self.close()
                raise FlowCallError("CANCELLED" if self._cancelled else "UNAVAILABLE", "connection closed")
            break
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            self.close()
            raise FlowCallError("INTERNAL", f"HTTP/2 protocol error: {err}") from err
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self._buffer += event.data
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.ResponseReceived):
                self._check_headers(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                self._finish(event.headers)
            elif isinstance(event, h2.events.StreamReset):
                self.close()
                raise FlowCallError("UNAVAILABLE", f"stream reset by the node (code {event.error_code})")
            elif isinstance(event, h2.events.ConnectionTerminated) and not self._done:
                self.close()
                raise FlowCallError("UNAVAILABLE", "the node closed the connection")
        self._cut_messages()
        self._flush()

    def _cut_messages(self) -> None:
        buffer = self._buffer
        view = memoryview(buffer)
        pos, end = 0, len(buffer)
        pending = self._pending
        while end - pos >= 5:
            compressed, length = _PREFIX.unpack_from(view, pos)
            if compressed:
                raise FlowCallError("INTERNAL", "compressed messages are not supported")
            if length > MAX_MESSAGE:
                raise FlowCallError("RESOURCE_EXHAUSTED", f"message of {length} bytes")
            if end - pos - 5 < length:
                break
            pending.append(bytes(view[pos + 5 : pos + 5 + length]))
            pos += 5 + length
        view.release()
        if pos:
            del buffer[:pos]

    def _check_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        fields = dict(headers)
        if fields.get(b":status") != b"200":
            self.close()
            raise FlowCallError("UNAVAILABLE", f"HTTP status {fields.get(b':status', b'?').decode()}")
        if b"grpc-status" in fields:  # a trailers-only answer: the call ended at once
            self._finish(headers)

    def _finish(self, headers: list[tuple[bytes, bytes]]) -> None:
        fields = dict(headers)
        code = int(fields.get(b"grpc-status", b"2"))
        self._done = True
        if code != Status.OK:
            message = urllib.parse.unquote(fields.get(b"grpc-message", b"").decode(errors="replace"))
            self._cut_messages()
            self.close()
            try:
                name = Status(code).name
            except ValueError:
                name = str(code)
            raise FlowCallError(name, message)
