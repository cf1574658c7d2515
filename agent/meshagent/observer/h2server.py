"""A gRPC server on HTTP/2 (h2, sans-IO) and asyncio, for unary calls and batched server streams.

One event-loop thread owns every connection and all HTTP/2 state (h2conn.py). Unary handlers run on a
small thread pool behind a bounded queue; each server-streaming call gets its own worker thread, which
writes *already framed* bytes (many gRPC messages at once) through `ServerStream.write`: that call blocks
until HTTP/2 flow control and the socket accept the bytes, so a slow client slows its own worker and
nothing else (the flow ring behind it then overwrites, and the client is told what it lost), and a
client that stops reading altogether loses its stream after `stalled_stream_seconds`.

The server's limits (observer/limits.py) are enforced here (connections per listener, streams and
unary calls at once) and in each connection (h2conn.py); a housekeeping task closes connections that
never finish their preface, stay idle, or stop answering keepalive pings.
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

import h2.errors

from meshagent.observer.grpcwire import RpcError, Status, parse_messages
from meshagent.observer.h2conn import Call, Connection, StreamClosed
from meshagent.observer.limits import DEFAULT_LIMITS, ServerLimits
from meshagent.observer.listen_address import bound_socket

logger = logging.getLogger(__name__)

# A connection this young is never evicted to make room: its client has had no time yet to send its
# first request, and a flood of newer connections must not push it out before it can.
EVICTION_GRACE_S = 1.0

__all__ = ["CallInfo", "H2GrpcServer", "Method", "ServerStream", "StreamClosed", "StreamHandler"]


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


class ServerStream:
    """What a streaming handler holds (on its worker thread): write framed bytes, ask if still wanted."""

    def __init__(self, call: Call, loop: asyncio.AbstractEventLoop, stopping: threading.Event) -> None:
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
        """Sends length-prefixed messages; blocks for flow control; raises StreamClosed if the call ended
        (also when its client stopped reading for stalled_stream_seconds)."""
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


class H2GrpcServer:
    """Listens on Unix and TCP (optionally TLS) sockets and serves `methods` (full path -> Method)."""

    def __init__(self, methods: Mapping[str, Method], *, limits: ServerLimits = DEFAULT_LIMITS) -> None:
        self._methods = dict(methods)
        self.limits = limits
        self._streams = threading.BoundedSemaphore(limits.max_flow_streams)
        self._unary_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="observer")
        self._unary_queued = 0  # loop thread only
        self._stopping = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_exception)
        self._thread = threading.Thread(target=self._loop.run_forever, name="observer-io", daemon=True)
        self._listeners: list[asyncio.base_events.Server] = []
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()
        self.connections: dict[str, set[Connection]] = {}  # by listener
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused_connections = 0

    # -- lifecycle (any thread) -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._run(self._start_housekeeping())

    async def _start_housekeeping(self) -> None:
        task = self._loop.create_task(self._housekeeping())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def listen_unix(self, path: Path) -> None:
        """Binds a Unix socket readable and writable by its owner only (from the moment it exists)."""
        old = os.umask(0o177)
        try:
            server = self._run(
                self._loop.create_unix_server(lambda: Connection(self, f"unix:{path}"), str(path))
            )
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._listeners.append(server)

    def listen_tcp(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Binds host:port (port 0: any) and returns the bound port."""
        name = f"tcp:{host}:{port}"
        sock = bound_socket(host, port)
        server = self._run(
            self._loop.create_server(
                lambda: Connection(self, name),
                sock=sock,
                ssl=ssl_context,
                ssl_handshake_timeout=self.limits.tls_handshake_timeout_seconds if ssl_context else None,
            )
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
            for task in list(self._tasks):
                task.cancel()
            for c in self.all_connections():
                c.stop_streams()
                c.abort()
            await asyncio.sleep(0)

        self._run(abort_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
        self._unary_pool.shutdown(wait=False)

    def all_connections(self) -> list[Connection]:
        return [c for conns in self.connections.values() for c in conns]

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            # A client that fails (or never finishes) the TLS handshake, or hangs up: not our error.
            logger.debug("observer connection: %s", context.get("message"), exc_info=exc)
            return
        loop.default_exception_handler(context)

    # -- connections (loop thread) ----------------------------------------------------------------------
    def admit(self, conn: Connection) -> bool:
        """Takes `conn` into its listener's set; at the limit the longest-idle connection without calls
        (older than EVICTION_GRACE_S) makes room, its client reconnects when it needs to; else `conn`
        is refused."""
        if self._stopping.is_set():
            return False
        conns = self.connections.setdefault(conn.listener, set())
        if len(conns) >= self.limits.max_connections:
            now = time.monotonic()
            idle = [
                c for c in conns if not c.calls and not c.closing and now - c.opened_at >= EVICTION_GRACE_S
            ]
            if not idle:
                self.refused_connections += 1
                return False
            victim = min(idle, key=lambda c: c.idle_since)
            conns.discard(victim)
            victim.goaway(h2.errors.ErrorCodes.NO_ERROR, b"too many connections")
        conns.add(conn)
        return True

    def forget(self, conn: Connection) -> None:
        self.connections.get(conn.listener, set()).discard(conn)

    async def _housekeeping(self) -> None:
        lim = self.limits
        shortest = min(lim.preface_timeout_seconds, lim.idle_timeout_seconds, lim.keepalive_timeout_seconds)
        tick = max(0.05, min(1.0, shortest / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for c in self.all_connections():
                if c.closing:
                    continue
                if not c.preface_done:
                    if now - c.opened_at > lim.preface_timeout_seconds:
                        logger.debug("%s did not finish its preface; closing", c.peer)
                        c.goaway(h2.errors.ErrorCodes.PROTOCOL_ERROR, b"preface timeout")
                    continue
                if not c.calls and now - c.idle_since > lim.idle_timeout_seconds:
                    c.goaway(h2.errors.ErrorCodes.NO_ERROR, b"idle")
                elif c.ping_sent_at is not None:
                    if now - c.ping_sent_at > lim.keepalive_timeout_seconds:
                        logger.info("%s did not answer a keepalive ping; closing", c.peer)
                        c.abort()
                elif now - c.last_read > lim.keepalive_time_seconds:
                    c.ping()

    # -- calls (loop thread) ----------------------------------------------------------------------------
    def dispatch(self, call: Call) -> None:
        conn = call.conn
        body = conn.take_body(call)
        if self._stopping.is_set():
            conn.finish(call, Status.UNAVAILABLE, "the server is stopping")
            return
        method = self._methods.get(call.path)
        if method is None:
            conn.finish(call, Status.UNIMPLEMENTED, f"unknown method {call.path}")
            return
        try:
            messages = parse_messages(body, max_size=self.limits.max_receive_message_bytes)
            if len(messages) != 1:
                raise RpcError(Status.INTERNAL, f"expected one request message, got {len(messages)}")
        except RpcError as err:
            conn.finish(call, err.status, err.message)
            return
        request = messages[0]
        if method.unary is not None:
            self._start_unary(call, method.unary, request)
        elif method.stream is not None:
            self._start_stream(call, method.stream, request)

    def _start_unary(self, call: Call, handler: UnaryHandler, request: bytes) -> None:
        limit = self.limits.max_unary_queue
        if self._unary_queued >= limit:
            call.conn.finish(call, Status.RESOURCE_EXHAUSTED, f"too many calls: at most {limit} at once")
            return
        self._unary_queued += 1
        info = CallInfo(call.conn.peer, call.deadline)
        fut = self._loop.run_in_executor(self._unary_pool, _run_unary, handler, request, info)

        def done(f: asyncio.Future[tuple[Status, str, bytes | None]]) -> None:
            status, message, response = f.result()
            task = self._loop.create_task(call.conn.respond(call, status, message, response))
            self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._unary_done)

        fut.add_done_callback(done)

    def _unary_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._unary_queued -= 1

    def _start_stream(self, call: Call, handler: StreamHandler, request: bytes) -> None:
        conn, lim = call.conn, self.limits
        if conn.flow_streams >= lim.max_flow_streams_per_connection:
            conn.finish(
                call,
                Status.RESOURCE_EXHAUSTED,
                f"too many streams on this connection: at most {lim.max_flow_streams_per_connection}",
            )
            return
        if not self._streams.acquire(blocking=False):
            conn.finish(call, Status.RESOURCE_EXHAUSTED, f"too many streams: at most {lim.max_flow_streams}")
            return
        conn.flow_streams += 1
        call.flow_stream = True
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

    def _run_stream(self, call: Call, handler: StreamHandler, request: bytes, stream: ServerStream) -> None:
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
                self._loop.call_soon_threadsafe(self._stream_done, call, status, message)

    @staticmethod
    def _stream_done(call: Call, status: Status, message: str) -> None:
        call.conn.flow_streams -= 1
        call.flow_stream = False
        call.conn.finish(call, status, message)

    def _why_ended(self, call: Call, status: Status, message: str) -> tuple[Status, str]:
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
