"""The flow API under attack: each server limit (observer/limits.py) hit by a real client on a real socket,
with another client served meanwhile and the serving process's memory bounded.

Memory is measured where it means something: in the front process (the agent's default), whose RSS holds
only the server; in this process the attacking client's own buffers would blur it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import h2.errors
import h2.events
import pytest
from meshagent.observer.client import ObserverClient
from meshagent.observer.limits import ServerLimits
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.observer import observer_pb2_grpc as ogrpc
from meshagent.observer.server import ObserverServer, ServerConfig, TlsConfig
from meshagent.observer.service import ObserverService

from tests.observer import attack as a
from tests.observer import helpers as h
from tests.observer.pki import SERVER_NAME

GET_FLOWS = b"/observer.Observer/GetFlows"
SERVER_STATUS = b"/observer.Observer/ServerStatus"
FOLLOW = opb.GetFlowsRequest(follow=True).SerializeToString()
MiB = 1 << 20


def wait_for(predicate: object, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(predicate())  # type: ignore[operator]


@contextmanager
def served(tmp_path: Path, front: bool, **limits: object) -> Iterator[h.Served]:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    with h.serve(
        pipeline, tmp_path / "o.sock", front_process=front, limits=ServerLimits().replace(**limits)
    ) as s:
        yield s


def server_pid(s: h.Served) -> int | str:
    front = s.server.front
    return front.pid if front is not None and front.pid is not None else "self"


def status_ok(s: h.Served) -> bool:
    """Another client, on its own connection, is served."""
    with ObserverClient(s.target, timeout_s=10) as c:
        return c.server_status().max_flows == 4096


def test_rapid_reset_flood_gets_goaway_enhance_your_calm_and_others_are_served(
    tmp_path: Path, serving_mode: bool
) -> None:
    with served(tmp_path, serving_mode) as s:
        rss_before = a.rss_bytes(server_pid(s))
        attacker = a.Attacker(s.socket)
        for _ in range(10_000):  # each stream opened, then reset at once (CVE-2023-44487)
            sid = attacker.h2.get_next_available_stream_id()
            attacker.h2.send_headers(sid, a.request_headers(GET_FLOWS))
            attacker.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        flood = attacker.h2.data_to_send()
        done: list[float] = []

        def victim() -> None:
            start = time.monotonic()
            if status_ok(s):
                done.append(time.monotonic() - start)

        sender = threading.Thread(target=lambda: _send_ignoring_reset(attacker.sock, flood), daemon=True)
        sender.start()
        other = threading.Thread(target=victim, daemon=True)
        other.start()
        got = attacker.read_until_closed()
        sender.join(timeout=15)
        other.join(timeout=15)
        attacker.close()
        goaways = [f for f in got if f.type == a.GOAWAY]
        assert attacker.closed and goaways, "the server neither sent GOAWAY nor closed"
        assert goaways[-1].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert done, "another client was not served during the flood"
        print(f"victim's ServerStatus during the flood: {done[0] * 1000:.0f} ms")
        assert status_ok(s)
        assert wait_for(lambda: s.service.active_streams == 0)
        if serving_mode:
            assert a.rss_bytes(server_pid(s)) - rss_before < 64 * MiB


def _send_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server hung up on the flood: expected
        sock.sendall(data)


def test_a_stream_over_the_concurrency_limit_is_refused_and_the_connection_lives(
    tmp_path: Path, serving_mode: bool
) -> None:
    with served(tmp_path, serving_mode, max_concurrent_streams=3) as s:
        c = a.Attacker(s.socket)
        try:
            held = [c.open_stream(GET_FLOWS, a.grpc_body(FOLLOW)) for _ in range(3)]
            extra = c.open_stream(GET_FLOWS, a.grpc_body(FOLLOW))
            c.send()
            assert wait_for(lambda: s.service.active_streams == 3)
            refused = [f for f in c.read_for(1.0) if f.type == a.RST_STREAM and f.stream_id == extra]
            assert refused and refused[0].error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            assert not any(f.type == a.GOAWAY for f in a.frames(c.received))
            # The same connection still works: one follower ends, a unary call takes its place.
            c.h2.reset_stream(held[0], h2.errors.ErrorCodes.CANCEL)
            sid = c.open_stream(SERVER_STATUS, a.grpc_body(b""))
            c.send()
            assert wait_for(
                lambda: any(
                    f.type == a.HEADERS and f.stream_id == sid and f.flags & 0x1 for f in c.read_for(0.2)
                )
            ), "no answer on the connection after a refused stream"
        finally:
            c.close()


def test_a_100_mib_request_is_refused_after_the_limit_and_its_stream_reset(
    tmp_path: Path, serving_mode: bool
) -> None:
    with served(tmp_path, serving_mode) as s:
        rss_before = a.rss_bytes(server_pid(s))
        with grpc.insecure_channel(s.target) as ch:
            call = ch.unary_unary(
                "/observer.Observer/ServerStatus",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as err:
                call(b"\x00" * (100 * MiB), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than" in (err.value.details() or "")
        assert status_ok(s)
        if serving_mode:
            assert a.rss_bytes(server_pid(s)) - rss_before < 64 * MiB


def test_an_oversized_request_cannot_be_sent_past_the_limit(tmp_path: Path) -> None:
    """Honest flow control: credit is only given for what the server will keep, so a client cannot push
    100 MiB; once over 4 MiB its stream is ended (RESOURCE_EXHAUSTED, then RST_STREAM)."""
    with served(tmp_path, False) as s:
        c = a.Attacker(s.socket)
        try:
            c.sock.setblocking(False)
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, a.request_headers(SERVER_STATUS))
            c.sock.setblocking(True)
            c.send()
            sent = 0
            chunk = b"\x00" * 16384
            reset = False
            deadline = time.monotonic() + 30
            while sent < 100 * MiB and not reset and time.monotonic() < deadline:
                window = min(c.h2.local_flow_control_window(sid), len(chunk))
                if window > 0:
                    c.h2.send_data(sid, chunk[:window])
                    sent += window
                    c.send()
                    continue
                c.sock.settimeout(2)
                data = c.sock.recv(1 << 20)
                assert data, "closed instead of the stream being reset"
                for ev in c.h2.receive_data(data):
                    if isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                        reset = True
                        assert ev.error_code == h2.errors.ErrorCodes.NO_ERROR
                    if isinstance(ev, h2.events.TrailersReceived | h2.events.ResponseReceived):
                        assert dict(ev.headers).get(b"grpc-status") == b"8"  # RESOURCE_EXHAUSTED
                c.send()
            assert reset, f"stream not reset after {sent} bytes"
            assert sent < 4 * MiB + 2 * MiB
        finally:
            c.close()


def test_a_slowloris_preface_is_closed_and_others_are_served(tmp_path: Path, serving_mode: bool) -> None:
    with served(tmp_path, serving_mode, preface_timeout_seconds=1.0) as s:
        slow = a.Attacker(s.socket, preface=False)
        try:
            slow.sock.sendall(a.PREFACE[:10])  # and never the rest
            assert status_ok(s)
            slow.read_until_closed(timeout=10)
            assert slow.closed, "a connection that never finished its preface is still open"
        finally:
            slow.close()


def test_a_tls_handshake_that_never_ends_is_closed(
    tmp_path: Path, serving_mode: bool, pki: dict[str, Path]
) -> None:
    server = ObserverServer(
        ObserverService(h.make_pipeline()),
        ServerConfig(
            unix_socket=None,
            tcp_address="127.0.0.1:0",
            tls=TlsConfig(pki["srv_crt"], pki["srv_key"]),
            limits=ServerLimits(tls_handshake_timeout_seconds=1.0),
            front_process=serving_mode,
        ),
    )
    server.start()
    try:
        assert server.tcp_port
        slow = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=10)
        slow.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more
        # Meanwhile a real TLS client is served.
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        ctx.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", server.tcp_port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
        ):
            assert tls.selected_alpn_protocol() == "h2"
        try:
            data = slow.recv(1024)  # blocks until the server gives up on it (10 s socket timeout)
        except ConnectionResetError:
            data = b""
        assert data == b"", "the half-open TLS connection was not closed"
        slow.close()
    finally:
        server.stop(grace=None)


def test_a_thousand_idle_connections_do_not_lock_others_out_and_are_closed(
    tmp_path: Path, serving_mode: bool
) -> None:
    with served(tmp_path, serving_mode, max_connections=100, idle_timeout_seconds=3.0) as s:
        rss_before = a.rss_bytes(server_pid(s))
        idle = [a.Attacker(s.socket) for _ in range(1000)]
        try:
            time.sleep(1.0)  # the flood is over; a client comes along
            # The listener holds at most 100: the longest idle make room for newcomers.
            assert status_ok(s)
            if serving_mode:
                assert a.rss_bytes(server_pid(s)) - rss_before < 64 * MiB
            else:
                assert wait_for(lambda: sum(len(c) for c in _server(s).connections.values()) <= 100)
            # Every idle one is told to go away (refused, evicted, or after idle_timeout_seconds) and
            # closed.
            told = 0
            for c in idle:
                frames = c.read_until_closed(timeout=15)
                assert c.closed
                goaway = [f for f in frames if f.type == a.GOAWAY]
                assert all(f.error_code == 0 for f in goaway)
                told += bool(goaway)
            assert told >= 900  # the rest hung up on before their GOAWAY was read (reset)
        finally:
            for c in idle:
                c.close()
        assert status_ok(s)


def _server(s: h.Served) -> object:
    inner = s.server._server  # the in-process server
    assert inner is not None
    return inner


def test_a_connection_that_does_not_answer_keepalive_pings_is_closed(tmp_path: Path) -> None:
    with served(tmp_path, False, keepalive_time_seconds=0.5, keepalive_timeout_seconds=0.5) as s:
        c = a.Attacker(s.socket)
        try:
            c.sock.sendall(b"")  # it reads nothing from now on, so it answers no ping
            time.sleep(2.5)
            frames = c.read_until_closed(timeout=10)
            assert c.closed
            assert any(f.type == a.PING and not f.flags & 0x1 for f in frames), "no keepalive ping was sent"
        finally:
            c.close()


def test_a_ping_flood_gets_goaway_enhance_your_calm(tmp_path: Path) -> None:
    with served(tmp_path, False) as s:
        c = a.Attacker(s.socket)
        try:
            for i in range(1000):
                c.h2.ping(i.to_bytes(8, "big"))
            _send_ignoring_reset(c.sock, c.h2.data_to_send())
            frames = c.read_until_closed()
            goaway = [f for f in frames if f.type == a.GOAWAY]
            assert goaway and goaway[-1].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            assert b"too_many_pings" in goaway[-1].payload
            assert sum(f.type == a.PING for f in frames) < 1000
        finally:
            c.close()
        assert status_ok(s)


def test_clients_that_never_read_cannot_lock_out_one_that_does(tmp_path: Path, serving_mode: bool) -> None:
    """16 connections follow and never read (the old server-wide cap was 16); each stream is reset once
    it has been stuck for stalled_stream_seconds, and a reading client follows meanwhile."""
    pipeline = h.make_pipeline(capacity=1024)
    limits = ServerLimits(max_flow_streams=16, stalled_stream_seconds=1.0)
    with h.serve(pipeline, tmp_path / "o.sock", front_process=serving_mode, limits=limits) as s:
        stuck = [a.Attacker(s.socket, window=1024) for _ in range(16)]
        try:
            for c in stuck:
                c.open_stream(GET_FLOWS, a.grpc_body(FOLLOW))
                c.send()
            assert wait_for(lambda: s.service.active_streams == 16)
            stop = threading.Event()

            def produce() -> None:
                while not stop.is_set():
                    pipeline.on_events([h.event(dport=1000 + i) for i in range(50)])
                    time.sleep(0.05)

            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            try:
                # The stuck streams are reset; then the reader gets its stream and flows.
                assert wait_for(lambda: s.service.active_streams == 0, timeout=20)
                with grpc.insecure_channel(s.target) as ch:
                    stream = ogrpc.ObserverStub(ch).GetFlows(opb.GetFlowsRequest(follow=True), timeout=20)
                    got = 0
                    for r in stream:
                        got += r.HasField("flow")
                        if got >= 200:
                            stream.cancel()
                            break
                assert got >= 200
            finally:
                stop.set()
                producer.join()
            for c in stuck:
                resets = [f for f in c.read_for(0.2) if f.type == a.RST_STREAM]
                assert resets and resets[0].error_code == h2.errors.ErrorCodes.CANCEL
        finally:
            for c in stuck:
                c.close()


def test_getflows_streams_are_limited_per_connection(tmp_path: Path, serving_mode: bool) -> None:
    with served(tmp_path, serving_mode, max_flow_streams_per_connection=2) as s:
        greedy = a.Attacker(s.socket)
        try:
            for _ in range(2):
                greedy.open_stream(GET_FLOWS, a.grpc_body(FOLLOW))
            third = greedy.open_stream(GET_FLOWS, a.grpc_body(FOLLOW))
            greedy.send()
            ended: list[h2.events.Event] = []
            assert wait_for(
                lambda: (
                    ended.extend(
                        e
                        for e in greedy.events()
                        if isinstance(e, h2.events.ResponseReceived | h2.events.TrailersReceived)
                        and e.stream_id == third
                    )
                    or ended
                )
            )
            headers = dict(ended[0].headers or [])
            assert headers[b"grpc-status"] == b"8"  # RESOURCE_EXHAUSTED
            assert b"on this connection" in headers[b"grpc-message"]
            assert s.service.active_streams == 2
            # Another connection still follows.
            with ObserverClient(s.target, timeout_s=10) as c:
                got = c.get_flows(opb.GetFlowsRequest(number=3, follow=True), follow_timeout_s=5)
                assert next(got).HasField("flow")
                assert wait_for(lambda: s.service.active_streams == 3)
        finally:
            greedy.close()


def test_the_unary_queue_is_bounded(tmp_path: Path) -> None:
    from meshagent.observer.h2server import CallInfo, H2GrpcServer, Method

    release = threading.Event()

    def slow(request: bytes, info: CallInfo) -> bytes:
        release.wait(20)
        return b""

    server = H2GrpcServer({"/t.T/Slow": Method(unary=slow)}, limits=ServerLimits(max_unary_queue=2))
    server.start()
    try:
        server.listen_unix(tmp_path / "t.sock")
        with grpc.insecure_channel(f"unix://{tmp_path / 't.sock'}") as ch:
            call = ch.unary_unary(
                "/t.T/Slow", request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            pending = [call.future(b"", timeout=20) for _ in range(2)]
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as err:
                call(b"", timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            for p in pending:
                assert p.result() == b""
            assert call(b"", timeout=10) == b""  # the queue drained
    finally:
        release.set()
        server.stop(grace=None)


def test_docs_list_every_limit_and_its_default() -> None:
    from tests.deploy.docs_check import code_spans, table_rows
    from tests.deploy.manifests import REPO

    rows = table_rows((REPO / "docs" / "flows.md").read_text(), "| limit | default |")
    documented: dict[str, str] = {}
    for row in rows:
        names, defaults = code_spans(row[0]), code_spans(row[1])
        assert len(names) == len(defaults), row[0]
        documented.update(zip(names, defaults, strict=True))
    expected = {name: f"{value:.12g}" for name, value in ServerLimits().as_dict().items()}
    assert documented == expected


def test_limits_are_settings_with_clear_errors(tmp_path: Path) -> None:
    import click
    from meshagent.observer.limits import DEFAULT_LIMITS

    from tests.cliparse import run_config

    config = tmp_path / "config.yaml"
    config.write_text("node: n\nobserver_limits: {max_connections: 64, idle_timeout_seconds: 30}\n")
    limits = run_config(["run", "--config", str(config)], {}).observer_limits
    assert (limits.max_connections, limits.idle_timeout_seconds) == (64, 30.0)
    assert limits.max_receive_message_bytes == 4 << 20  # the others keep their defaults
    env = {"MESHAGENT_OBSERVER_LIMITS": "max_flow_streams=8, max_flow_streams_per_connection=2"}
    limits = run_config(["run", "--node", "n"], env).observer_limits
    assert (limits.max_flow_streams, limits.max_flow_streams_per_connection) == (8, 2)
    assert run_config(["run", "--node", "n", "--observer-limits", ""], {}).observer_limits == DEFAULT_LIMITS
    for bad, why in [
        ("max_conections=5", "unknown limit 'max_conections'"),
        ("max_connections=0", "must be positive"),
        ("max_connections=2.5", "whole number"),
        ("max_flow_streams=4,max_flow_streams_per_connection=8", "must not exceed"),
        ("max_connections", "expected name=value"),
    ]:
        with pytest.raises(click.BadParameter, match=why):
            run_config(["run", "--node", "n", "--observer-limits", bad], {})
