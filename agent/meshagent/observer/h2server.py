"""A gRPC server on HTTP/2 (h2, sans-IO) and asyncio, for unary calls and batched server streams.

One event-loop thread owns every connection and all HTTP/2 state. Unary handlers run on a small thread
pool; each server-streaming call gets its own worker thread, which writes *already framed* bytes (many
gRPC messages at once) through `ServerStream.write`: that call blocks until HTTP/2 flow control and the
socket accept the bytes, so a slow client slows its own worker and nothing else (the flow ring behind it
then overwrites, and the client is told what it lost).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from meshagent.observer.grpcwire import (
    RpcError,
    Status,
    frame,
    parse_messages,
    parse_timeout,
    response_headers,
    trailers,
    trailers_only,
)

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 << 20
MAX_CONCURRENT_STREAMS = 100


class StreamClosed(Exception):
    """The client went away (reset, disconnect, deadline) or the server is stopping."""


@dataclass(frozen=True)
class CallInfo:
    peer: str
    deadline: float | None  # time.monotonic() value, None: no deadline


UnaryHandler = Callable[[bytes, CallInfo], bytes]  # request message -> response message (or RpcError)
StreamHandler = Callable[[bytes, "ServerStream"], None]  # writes framed messages until done (or RpcError)


@dataclass(frozen=True)
class Method:
    unary: UnaryHandler | None = None
    stream: StreamHandler | None = None


class _Call:
    """Loop-side state of one HTTP/2 stream carrying one gRPC call."""

    __slots__ = ("body", "closed", "conn", "deadline", "path", "sent_headers", "stream_id", "window")

    def __init__(self, conn: _Connection, stream_id: int, path: str, deadline: float | None) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.path = path
        self.deadline = deadline
        self.body = bytearray()
        self.sent_headers = False
        self.closed = False  # reset by the client, connection gone, or finished
        self.window = asyncio.Event()  # set when the peer opens its flow-control window


class ServerStream:
    """What a streaming handler holds (on its worker thread): write framed bytes, ask if still wanted."""

    def __init__(self, call: _Call, loop: asyncio.AbstractEventLoop, stopping: threading.Event) -> None:
        self._call = call
        self._loop = loop
        self._stopping = stopping
        self.peer = call.conn.peer

    @property
    def deadline(self) -> float | None:
        return self._call.deadline

    def is_active(self) -> bool:
        c = self._call
        if c.closed or self._stopping.is_set():
            return False
        return c.deadline is None or time.monotonic() < c.deadline

    def write(self, framed: bytes) -> None:
        """Sends length-prefixed messages; blocks for flow control; raises StreamClosed if the call ended."""
        if not self.is_active():
            raise StreamClosed()
        fut = asyncio.run_coroutine_threadsafe(self._call.conn.send_data(self._call, framed), self._loop)
        while True:
            try:
                fut.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                # Blocked on a slow reader: give up when the call ends or its deadline passes.
                if not self.is_active():
                    fut.cancel()
                    raise StreamClosed() from None


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2GrpcServer) -> None:
        self._server = server
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, _Call] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self.peer = "unknown"

    # -- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.peer = _peer_name(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() not in (None, "h2"):
            logger.debug("closing %s: ALPN %s is not h2", self.peer, ssl_object.selected_alpn_protocol())
            transport.close()
            return
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16384,
            },
        )
        self._h2.initiate_connection()
        self._flush()
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        for call in self._calls.values():
            self._close_call(call)
        self._calls.clear()
        self._writable.set()  # wake senders so they see the calls closed

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            logger.debug("HTTP/2 protocol error from %s: %s", self.peer, err)
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            self._on_event(event)
        self._flush()

    # -- HTTP/2 events ----------------------------------------------------------------------------------
    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            call = self._calls.get(event.stream_id)
            if call is not None:
                self._server.dispatch(call)
        elif isinstance(event, h2.events.StreamReset):
            call = self._calls.pop(event.stream_id, None)
            if call is not None:
                self._close_call(call)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                for call in self._calls.values():
                    call.window.set()
            else:
                call = self._calls.get(event.stream_id)
                if call is not None:
                    call.window.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for call in self._calls.values():
                call.window.set()  # the initial window (and so every stream's window) may have grown
        elif isinstance(event, h2.events.ConnectionTerminated):
            for call in self._calls.values():
                self._close_call(call)
            self._calls.clear()
            if self._transport is not None:
                self._transport.close()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        headers = {k: v for k, v in event.headers or ()}
        if headers.get(b":method") != b"POST":
            self._h2.send_headers(sid, [(b":status", b"405")], end_stream=True)
            return
        content_type = headers.get(b"content-type", b"")
        if not content_type.startswith(b"application/grpc"):
            self._h2.send_headers(sid, [(b":status", b"415")], end_stream=True)
            return
        timeout = headers.get(b"grpc-timeout")
        seconds = parse_timeout(timeout) if timeout is not None else None
        deadline = time.monotonic() + seconds if seconds is not None else None
        path = headers.get(b":path", b"").decode("utf-8", "replace")
        self._calls[sid] = _Call(self, sid, path, deadline)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        # Give the window back at once: requests are small and bounded below.
        self._h2.acknowledge_received_data(event.flow_controlled_length, sid)
        call = self._calls.get(sid)
        if call is None:
            return
        call.body += event.data or b""
        if len(call.body) > MAX_REQUEST_BYTES + 5:
            self.finish(call, Status.RESOURCE_EXHAUSTED, f"request larger than {MAX_REQUEST_BYTES} bytes")

    # -- sending (loop thread) --------------------------------------------------------------------------
    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close_call(self, call: _Call) -> None:
        call.closed = True
        call.window.set()

    def _ensure_headers(self, call: _Call) -> None:
        if not call.sent_headers:
            self._h2.send_headers(call.stream_id, response_headers())
            call.sent_headers = True

    async def send_data(self, call: _Call, data: bytes) -> None:
        """Writes `data` on the call's stream as flow control allows; raises StreamClosed if it ends."""
        if call.closed:
            raise StreamClosed()
        try:
            self._ensure_headers(call)
            view = memoryview(data)
            while view:
                window = self._h2.local_flow_control_window(call.stream_id)
                if window <= 0:
                    self._flush()
                    call.window.clear()
                    await call.window.wait()
                    if call.closed:
                        raise StreamClosed()
                    continue
                n = min(window, self._h2.max_outbound_frame_size, len(view))
                self._h2.send_data(call.stream_id, view[:n].tobytes())
                view = view[n:]
            self._flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as err:
            self._close_call(call)
            raise StreamClosed() from err
        if not self._writable.is_set():
            await self._writable.wait()  # the socket buffer is full: wait for the kernel to take it
        if call.closed:
            raise StreamClosed()

    async def respond(self, call: _Call, status: Status, message: str, response: bytes | None) -> None:
        """Ends a unary call: its response (in frames, as flow control allows), then the status."""
        if response is not None:
            try:
                await self.send_data(call, frame(response))
            except StreamClosed:
                return
        self.finish(call, status, message)

    def finish(self, call: _Call, status: Status, message: str = "") -> None:
        """Ends a call with its status (trailers-only when nothing was sent)."""
        if call.closed:
            return
        try:
            if call.sent_headers:
                self._h2.send_headers(call.stream_id, trailers(status, message), end_stream=True)
            else:
                self._h2.send_headers(call.stream_id, trailers_only(status, message), end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(call.stream_id)
        self._calls.pop(call.stream_id, None)
        self._close_call(call)
        self._flush()

    def goaway(self) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection()
        self._flush()

    def abort(self) -> None:
        for call in self._calls.values():
            self._close_call(call)
        if self._transport is not None:
            self._transport.close()


def _peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unix:" + (str(transport.get_extra_info("sockname")) or "")


class H2GrpcServer:
    """Listens on Unix and TCP (optionally TLS) sockets and serves `methods` (full path -> Method)."""

    def __init__(
        self,
        methods: Mapping[str, Method],
        *,
        max_streams: int = 16,
        unary_workers: int = 4,
    ) -> None:
        self._methods = dict(methods)
        self._max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)
        self._unary_pool = concurrent.futures.ThreadPoolExecutor(unary_workers, thread_name_prefix="observer")
        self._stopping = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_exception)
        self._thread = threading.Thread(target=self._loop.run_forever, name="observer-io", daemon=True)
        self._listeners: list[asyncio.base_events.Server] = []
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()
        self.connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle (any thread) -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def listen_unix(self, path: Path) -> None:
        """Binds a Unix socket readable and writable by its owner only (from the moment it exists)."""
        old = os.umask(0o177)
        try:
            server = self._run(self._loop.create_unix_server(lambda: _Connection(self), str(path)))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._listeners.append(server)

    def listen_tcp(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Binds host:port (port 0: any) and returns the bound port."""
        server = self._run(
            self._loop.create_server(lambda: _Connection(self), host or None, port, ssl=ssl_context)
        )
        self._listeners.append(server)
        return int(server.sockets[0].getsockname()[1])

    def stop(self, grace: float | None = 1.0) -> None:
        """Stops accepting, tells clients to go away, gives running calls `grace` seconds, then closes."""
        if not self._thread.is_alive():
            self._unary_pool.shutdown(wait=False)
            return
        self._stopping.set()

        async def close_listeners() -> None:
            # GOAWAY waits for the end: h2 takes no more frames once it has sent one, and the running
            # streams still need the peers' window updates to finish.
            for s in self._listeners:
                s.close()

        self._run(close_listeners())
        end = time.monotonic() + (grace or 0.0)
        with self._workers_lock:
            workers = list(self._workers)
        for w in workers:
            w.join(timeout=max(0.0, end - time.monotonic()))

        async def abort_all() -> None:
            for c in list(self.connections):
                c.goaway()
                c.abort()
            await asyncio.sleep(0)

        self._run(abort_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
        self._unary_pool.shutdown(wait=False)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, (ssl.SSLError, ConnectionError)):
            # A client that fails the TLS handshake (no or wrong certificate) or hangs up: not our error.
            logger.debug("observer connection: %s", context.get("message"), exc_info=exc)
            return
        loop.default_exception_handler(context)

    # -- calls (loop thread) ----------------------------------------------------------------------------
    def dispatch(self, call: _Call) -> None:
        conn = call.conn
        if self._stopping.is_set():
            conn.finish(call, Status.UNAVAILABLE, "the server is stopping")
            return
        method = self._methods.get(call.path)
        if method is None:
            conn.finish(call, Status.UNIMPLEMENTED, f"unknown method {call.path}")
            return
        try:
            messages = parse_messages(bytes(call.body), max_size=MAX_REQUEST_BYTES)
            if len(messages) != 1:
                raise RpcError(Status.INTERNAL, f"expected one request message, got {len(messages)}")
        except RpcError as err:
            conn.finish(call, err.status, err.message)
            return
        request = messages[0]
        call.body = bytearray()
        if method.unary is not None:
            self._start_unary(call, method.unary, request)
        elif method.stream is not None:
            self._start_stream(call, method.stream, request)

    def _start_unary(self, call: _Call, handler: UnaryHandler, request: bytes) -> None:
        info = CallInfo(call.conn.peer, call.deadline)
        fut = self._loop.run_in_executor(self._unary_pool, _run_unary, handler, request, info)

        def done(f: asyncio.Future[tuple[Status, str, bytes | None]]) -> None:
            status, message, response = f.result()
            task = self._loop.create_task(call.conn.respond(call, status, message, response))
            self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

        fut.add_done_callback(done)

    def _start_stream(self, call: _Call, handler: StreamHandler, request: bytes) -> None:
        if not self._streams.acquire(blocking=False):
            call.conn.finish(
                call, Status.RESOURCE_EXHAUSTED, f"too many streams: at most {self._max_streams} at once"
            )
            return
        stream = ServerStream(call, self._loop, self._stopping)
        worker = threading.Thread(
            target=self._run_stream,
            args=(call, handler, request, stream),
            name="observer-stream",
            daemon=True,
        )
        with self._workers_lock:
            self._workers.add(worker)
        worker.start()

    def _run_stream(self, call: _Call, handler: StreamHandler, request: bytes, stream: ServerStream) -> None:
        status, message = Status.OK, ""
        try:
            handler(request, stream)
            status, message = self._why_ended(call, Status.OK, "")
        except StreamClosed:
            status, message = self._why_ended(call, Status.CANCELLED, "cancelled")
        except RpcError as err:
            status, message = err.status, err.message
        except Exception as err:  # a handler bug must end its call, not the server
            logger.exception("streaming call %s failed", call.path)
            status, message = Status.UNKNOWN, f"{type(err).__name__}: {err}"
        finally:
            self._streams.release()
            with self._workers_lock:
                self._workers.discard(threading.current_thread())
        if not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already stopped
                self._loop.call_soon_threadsafe(call.conn.finish, call, status, message)

    def _why_ended(self, call: _Call, status: Status, message: str) -> tuple[Status, str]:
        """A stream that stopped early stopped for its deadline or for the server going away."""
        if self._stopping.is_set():
            return Status.UNAVAILABLE, "the server is stopping"
        if call.deadline is not None and time.monotonic() >= call.deadline:
            return Status.DEADLINE_EXCEEDED, "deadline exceeded"
        return status, message


def _run_unary(handler: UnaryHandler, request: bytes, info: CallInfo) -> tuple[Status, str, bytes | None]:
    try:
        return Status.OK, "", handler(request, info)
    except RpcError as err:
        return err.status, err.message, None
    except Exception as err:
        logger.exception("unary call failed")
        return Status.UNKNOWN, f"{type(err).__name__}: {err}", None
