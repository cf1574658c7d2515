"""The observer's own gRPC-over-HTTP/2 server: the protocol edges a client can hit, with real clients.

The Observer API itself is covered by test_getflows.py (grpcio) and test_go_client.py (grpc-go); here:
unknown methods, malformed requests, deadlines, cancellation, stopping with clients attached, HTTP-level
refusals, and flow control with a client that reads slowly.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.observer import observer_pb2_grpc as ogrpc

from tests.observer import helpers as h


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def raw_call(ch: grpc.Channel, path: str, body: bytes, timeout: float = 5) -> bytes:
    call = ch.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return bytes(call(body, timeout=timeout))


def test_unknown_method_is_unimplemented(served: h.Served) -> None:
    with grpc.insecure_channel(served.target) as ch, pytest.raises(grpc.RpcError) as err:
        raw_call(ch, "/observer.Observer/NoSuchMethod", b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "NoSuchMethod" in (err.value.details() or "")


def test_unparseable_request_is_invalid_argument(served: h.Served) -> None:
    with grpc.insecure_channel(served.target) as ch, pytest.raises(grpc.RpcError) as err:
        raw_call(ch, "/observer.Observer/ServerStatus", b"\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ServerStatusRequest" in (err.value.details() or "")


def test_follow_ends_with_deadline_exceeded_and_frees_its_worker(served: h.Served) -> None:
    with grpc.insecure_channel(served.target) as ch:
        stub = ogrpc.ObserverStub(ch)
        started = time.monotonic()
        got = 0
        with pytest.raises(grpc.RpcError) as err:
            for r in stub.GetFlows(opb.GetFlowsRequest(follow=True, number=2), timeout=1.0):
                got += r.HasField("flow")
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert got == 2  # the history arrived before the deadline
        assert time.monotonic() - started < 5
    assert wait_for(lambda: served.service.active_streams == 0)


def test_cancelled_follower_frees_its_worker(served: h.Served) -> None:
    with grpc.insecure_channel(served.target) as ch:
        stream = ogrpc.ObserverStub(ch).GetFlows(opb.GetFlowsRequest(follow=True), timeout=30)
        assert wait_for(lambda: served.service.active_streams == 1)
        stream.cancel()
        assert wait_for(lambda: served.service.active_streams == 0)


def test_stop_ends_attached_followers_promptly(tmp_path: Path, serving_mode: bool) -> None:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    with (
        h.serve(pipeline, tmp_path / "o.sock", front_process=serving_mode) as s,
        grpc.insecure_channel(s.target) as ch,
    ):
        stream = ogrpc.ObserverStub(ch).GetFlows(opb.GetFlowsRequest(follow=True, number=3), timeout=60)
        seen: list[object] = []

        def read() -> None:
            try:
                for r in stream:
                    seen.append(r)
            except grpc.RpcError as err:
                seen.append(err.code())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert wait_for(lambda: len(seen) == 3)  # the history arrived: the stream is following
        started = time.monotonic()
        s.server.stop(grace=1.0)
        stop_s = time.monotonic() - started
        reader.join(timeout=10)
        assert not reader.is_alive()
    assert stop_s < 3
    # The follower got its history, then a status saying why the stream ended.
    assert len(seen) == 4, seen
    assert seen[-1] == grpc.StatusCode.UNAVAILABLE
    assert s.service.active_streams == 0
    assert not (tmp_path / "o.sock").exists()


class RawClient:
    """A bare HTTP/2 client (h2) for what gRPC clients never send and for controlling flow control."""

    def __init__(self, path: Path, *, window: int = 65535) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def request(
        self, path: bytes, body: bytes, *, method: bytes = b"POST", ctype: bytes = b"application/grpc"
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", b"localhost"),
            (b"content-type", ctype),
            (b"te", b"trailers"),
        ]
        self.conn.send_headers(sid, headers)
        self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        return sid

    def events(self) -> list[h2.events.Event]:
        data = self.sock.recv(1 << 20)
        assert data, "server closed the connection"
        out = self.conn.receive_data(data)
        self.flush()
        return list(out)

    def close(self) -> None:
        self.sock.close()


def grpc_body(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


@pytest.mark.parametrize(
    ("method", "ctype", "status"),
    [(b"GET", b"application/grpc", b"405"), (b"POST", b"text/plain", b"415")],
)
def test_non_grpc_requests_get_an_http_error(
    served: h.Served, method: bytes, ctype: bytes, status: bytes
) -> None:
    c = RawClient(served.socket)
    try:
        sid = c.request(b"/observer.Observer/ServerStatus", grpc_body(b""), method=method, ctype=ctype)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for ev in c.events():
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    assert dict(ev.headers)[b":status"] == status
                    return
        pytest.fail("no response headers")
    finally:
        c.close()


def test_a_client_that_stops_reading_holds_its_stream_not_the_server(
    tmp_path: Path, serving_mode: bool
) -> None:
    """Flow control: a client with a small window that never returns it gets only that much; the server
    keeps serving others, and the stuck stream's flows are reported lost to it when it reads again."""
    pipeline = h.make_pipeline(capacity=1024)
    with h.serve(pipeline, tmp_path / "o.sock", front_process=serving_mode) as s:
        c = RawClient(s.socket, window=4096)
        try:
            request = opb.GetFlowsRequest(follow=True).SerializeToString()
            c.request(b"/observer.Observer/GetFlows", grpc_body(request))
            assert wait_for(lambda: s.service.active_streams == 1)
            for _ in range(20):  # 20 x 100 flows: far more than 4 KB of responses, and more than the ring
                pipeline.on_events([h.event(dport=1000 + i) for i in range(100)])
            received = 0
            c.sock.settimeout(0.5)
            try:
                while True:  # read without acknowledging: the window stays shut after 4 KB
                    data = c.sock.recv(1 << 20)
                    if not data:
                        break
                    for ev in c.conn.receive_data(data):
                        if isinstance(ev, h2.events.DataReceived):
                            received += len(ev.data)
            except TimeoutError:
                pass
            assert 0 < received <= 4096
            # Meanwhile another client is served normally.
            with grpc.insecure_channel(s.target) as ch:
                status = ogrpc.ObserverStub(ch).ServerStatus(opb.ServerStatusRequest(), timeout=5)
            assert status.seen_flows == 2000
        finally:
            c.close()
        assert wait_for(lambda: s.service.active_streams == 0)


def test_large_unary_response_is_sent_in_frames_under_flow_control(tmp_path: Path) -> None:
    """A response bigger than a frame (16 KiB) and than the initial window (64 KiB) arrives whole."""
    from meshagent.observer.h2server import CallInfo, H2GrpcServer, Method

    big = bytes(range(256)) * 1200  # 300 KiB

    def echo_big(request: bytes, info: CallInfo) -> bytes:
        return big + request

    server = H2GrpcServer({"/t.T/Big": Method(unary=echo_big)})
    server.start()
    try:
        server.listen_unix(tmp_path / "t.sock")
        with grpc.insecure_channel(f"unix://{tmp_path / 't.sock'}") as ch:
            got = raw_call(ch, "/t.T/Big", b"tail", timeout=10)
    finally:
        server.stop(grace=None)
    assert got == big + b"tail"
