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
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.observer import observer_pb2_grpc as ogrpc

from tests.observer import helpers as h
from tests.waiting import wait_until


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
    assert wait_until(lambda: served.service.active_streams == 0, timeout=10)


def test_cancelled_follower_frees_its_worker(served: h.Served) -> None:
    with grpc.insecure_channel(served.target) as ch:
        stream = ogrpc.ObserverStub(ch).GetFlows(opb.GetFlowsRequest(follow=True), timeout=30)
        assert wait_until(lambda: served.service.active_streams == 1, timeout=10)
        stream.cancel()
        assert wait_until(lambda: served.service.active_streams == 0, timeout=10)


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
        assert wait_until(lambda: len(seen) == 3, timeout=10)  # the history arrived: the stream is following
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
    keeps serving others, and the stuck stream's flows are reported lost to it when it reads again.

    Every step waits for a condition, not for time, so a loaded machine only makes it slower: the window is
    seen full before the cap is checked, and the reopened stream is read until every flow is accounted."""
    window = 4096
    # 200 x 100 flows: far more than the window's worth, the ring, and what the socket between the agent and
    # the front process buffers (~8k records), so some are overwritten however the two are scheduled.
    pushed = 20_000
    pipeline = h.make_pipeline(capacity=1024)
    with h.serve(pipeline, tmp_path / "o.sock", front_process=serving_mode) as s:
        c = RawClient(s.socket, window=window)
        try:
            request = opb.GetFlowsRequest(follow=True).SerializeToString()
            sid = c.request(b"/observer.Observer/GetFlows", grpc_body(request))
            assert wait_until(lambda: s.service.active_streams == 1, timeout=10)
            for _ in range(pushed // 100):
                pipeline.on_events([h.event(dport=1000 + i) for i in range(100)])
            body = bytearray()
            acknowledge = False

            def read_some() -> None:
                c.sock.settimeout(0.2)
                try:
                    data = c.sock.recv(1 << 20)
                except TimeoutError:
                    return
                assert data, "the server closed the connection"
                for ev in c.conn.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                        body.extend(ev.data)
                        if acknowledge:
                            c.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                c.flush()

            # Read without acknowledging until the server has used the window (a flow is ~150 bytes).
            assert wait_until(lambda: read_some() or len(body) > window - 512, timeout=30, interval=0)
            assert len(body) <= window
            # Meanwhile another client is served normally.
            with grpc.insecure_channel(s.target) as ch:
                status = ogrpc.ObserverStub(ch).ServerStatus(opb.ServerStatusRequest(), timeout=5)
            assert status.seen_flows == pushed
            # Reopen the window: the stream resumes, and what the ring overwrote meanwhile is reported lost.
            acknowledge = True
            c.conn.acknowledge_received_data(len(body), sid)
            c.flush()
            flows, lost = 0, 0

            def accounted() -> bool:
                nonlocal flows, lost
                read_some()
                while len(body) >= 5 and len(body) >= 5 + int.from_bytes(body[1:5], "big"):
                    size = int.from_bytes(body[1:5], "big")
                    response = opb.GetFlowsResponse.FromString(bytes(body[5 : 5 + size]))
                    del body[: 5 + size]
                    if response.HasField("flow"):
                        flows += 1
                    elif response.HasField("lost_events"):
                        lost += response.lost_events.num_events_lost
                return flows + lost >= pushed

            assert wait_until(accounted, timeout=30, interval=0), (flows, lost)
            assert flows + lost == pushed and lost > 0, (flows, lost)
        finally:
            c.close()
        assert wait_until(lambda: s.service.active_streams == 0, timeout=10)


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
