"""One HTTP/2 connection of the gRPC server (h2server.py): its streams, flow control and limits.

Everything here runs on the server's event-loop thread. The connection holds the limits that concern a
single client (observer/limits.py): streams at once (one more is refused, not the connection), request
size (the stream is reset once refused), bytes held (flow-control credit is only given back while the
connection holds less than its budget), resets and pings (a budget each; beyond it GOAWAY
ENHANCE_YOUR_CALM), and the timers the server's housekeeping checks (preface, idle, keepalive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from meshagent.observer.grpcwire import (
    Status,
    frame,
    parse_timeout,
    response_headers,
    trailers,
    trailers_only,
)
from meshagent.observer.limits import ServerLimits, TokenBucket

logger = logging.getLogger(__name__)

FEED_BYTES = 16 << 10  # received bytes handed to h2 at a time: a flood is stopped within one slice
PREFIX_BYTES = 5  # a gRPC message's length prefix


class StreamClosed(Exception):
    """The client went away (reset, disconnect, deadline, stalled) or the server is stopping."""


class Owner(Protocol):
    """What a connection needs of its server."""

    limits: ServerLimits

    def dispatch(self, call: Call) -> None: ...

    def admit(self, conn: Connection) -> bool: ...

    def forget(self, conn: Connection) -> None: ...


class _ServerH2(h2.connection.H2Connection):
    @property
    def open_inbound_streams(self) -> int:
        # h2 would end the whole connection (GOAWAY PROTOCOL_ERROR) for one stream over
        # MAX_CONCURRENT_STREAMS; HTTP/2 (RFC 9113, 5.1.2) asks for that stream to be refused, which the
        # connection does itself once the stream's headers are decoded (the HPACK state is shared).
        super().open_inbound_streams  # noqa: B018 - h2 forgets closed streams while counting
        return 0


class Call:
    """Loop-side state of one HTTP/2 stream carrying one gRPC call."""

    __slots__ = (
        "body",
        "closed",
        "conn",
        "deadline",
        "flow_stream",
        "path",
        "progress_at",
        "sent_headers",
        "stream_id",
        "window",
    )

    def __init__(self, conn: Connection, stream_id: int, path: str, deadline: float | None) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.path = path
        self.deadline = deadline
        self.body = bytearray()
        self.sent_headers = False
        self.closed = False  # reset by the client, connection gone, or finished
        self.flow_stream = False  # holds one of the connection's (and server's) GetFlows slots
        self.window = asyncio.Event()  # set when the peer opens its flow-control window
        self.progress_at = time.monotonic()  # the last time its response moved on


class Connection(asyncio.Protocol):
    def __init__(self, owner: Owner, listener: str) -> None:
        self._owner = owner
        self.limits = limits = owner.limits
        self.listener = listener
        self._h2 = _ServerH2(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self._transport: asyncio.Transport | None = None
        self.calls: dict[int, Call] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self.peer = "unknown"
        now = time.monotonic()
        self.opened_at = now
        self.preface_done = False
        self.idle_since = now  # when the last call ended (or the connection opened)
        self.last_read = now
        self.ping_sent_at: float | None = None  # our keepalive ping, not yet answered
        self.closing = False
        self.flow_streams = 0
        self._held = 0  # request bytes held for calls not yet dispatched
        self._deferred_acks: list[tuple[int, int]] = []  # (stream, bytes) credit withheld over budget
        self._resets = TokenBucket(limits.reset_burst, limits.resets_per_second, now)
        self._pings = TokenBucket(limits.ping_burst, limits.pings_per_second, now)

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
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16384,
            },
        )
        self._h2.initiate_connection()
        if not self._owner.admit(self):
            self.goaway(h2.errors.ErrorCodes.NO_ERROR, b"too many connections")
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._owner.forget(self)
        for call in self.calls.values():
            self._close_call(call)
        self.calls.clear()
        self._held = 0
        self._deferred_acks.clear()
        self._writable.set()  # wake senders so they see the calls closed

    def pause_writing(self) -> None:
        # The peer is not taking what we send: stop reading what it sends too (its pings and requests
        # would otherwise keep growing our answers), until it catches up.
        self._writable.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        view = memoryview(data)
        while view and not self.closing:
            piece, view = view[:FEED_BYTES], view[FEED_BYTES:]
            try:
                events = self._h2.receive_data(piece)
            except h2.exceptions.ProtocolError as err:
                logger.debug("HTTP/2 protocol error from %s: %s", self.peer, err)
                self._flush()
                self.abort()
                return
            for event in events:
                if self.closing:
                    break
                self._on_event(event)
            self._flush()

    # -- HTTP/2 events ----------------------------------------------------------------------------------
    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            call = self.calls.get(event.stream_id)
            if call is not None and not call.closed:
                self._owner.dispatch(call)
        elif isinstance(event, h2.events.StreamReset):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                self._release(call)
                self._close_call(call)
                self._note_idle()
            if event.remote_reset:
                # Every reset counts, also of a stream already answered (an HTTP error, say): each one
                # cost us a request's work.
                self._spend_reset()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                for call in self.calls.values():
                    call.window.set()
            else:
                call = self.calls.get(event.stream_id)
                if call is not None:
                    call.window.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.preface_done = True
            for call in self.calls.values():
                call.window.set()  # the initial window (and so every stream's window) may have grown
        elif isinstance(event, h2.events.PingReceived):
            if not self._pings.spend(time.monotonic()):
                self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, b"too_many_pings")
        elif isinstance(event, h2.events.PingAckReceived):
            self.ping_sent_at = None
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.abort()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        if len(self.calls) >= self.limits.max_concurrent_streams:
            # Over the limit we advertised: refused, which a client may retry (RFC 9113, 8.7). Refusals
            # cost the same budget as resets: a client that keeps being refused is flooding us.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            self._spend_reset()
            return
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
        self.calls[sid] = Call(self, sid, path, deadline)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        n = event.flow_controlled_length
        call = self.calls.get(sid)
        if call is None or call.closed:
            self._ack(sid, n)  # dropped: the connection's window must not shrink for it
            return
        data = event.data or b""
        limit = self.limits.max_receive_message_bytes
        if len(call.body) + len(data) > limit + PREFIX_BYTES:
            self._ack(sid, n)
            self.refuse(call, Status.RESOURCE_EXHAUSTED, f"request larger than {limit} bytes")
            return
        call.body += data
        self._held += len(data)
        # Honest flow control: credit goes back only while the connection holds less than its budget;
        # beyond it the client waits until calls are dispatched (_release).
        if self._held <= self.limits.max_connection_buffer_bytes:
            self._ack(sid, n)
        else:
            self._deferred_acks.append((sid, n))

    def _ack(self, sid: int, n: int) -> None:
        if n:
            with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                self._h2.acknowledge_received_data(n, sid)

    def take_body(self, call: Call) -> bytes:
        """The call's request body, no longer counted as held by this connection."""
        body = bytes(call.body)
        self._release(call)
        return body

    def _release(self, call: Call) -> None:
        self._held -= len(call.body)
        call.body = bytearray()
        while self._deferred_acks and self._held <= self.limits.max_connection_buffer_bytes:
            sid, n = self._deferred_acks.pop(0)
            self._ack(sid, n)
        self._flush()

    def _spend_reset(self) -> None:
        if not self._resets.spend(time.monotonic()):
            logger.warning("%s reset or overran too many streams; closing its connection", self.peer)
            self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, b"too many stream resets")

    def _note_idle(self) -> None:
        if not self.calls:
            self.idle_since = time.monotonic()

    # -- sending (loop thread) --------------------------------------------------------------------------
    def _flush(self) -> None:
        data = self._h2.data_to_send()
        transport = self._transport
        if not data or transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self.limits.max_connection_buffer_bytes:
            # Our writes are bounded by flow control and paused while the socket is full, so only a
            # peer that stopped reading while it kept asking (pings, settings) gets here.
            logger.warning("%s does not read what it asks for; closing its connection", self.peer)
            self.abort()

    def _close_call(self, call: Call) -> None:
        call.closed = True
        call.window.set()

    def _ensure_headers(self, call: Call) -> None:
        if not call.sent_headers:
            self._h2.send_headers(call.stream_id, response_headers())
            call.sent_headers = True

    async def _wait(self, call: Call, event: asyncio.Event) -> None:
        """Waits for `event`; a call whose response has not moved for stalled_stream_seconds is reset."""
        left = call.progress_at + self.limits.stalled_stream_seconds - time.monotonic()
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, left))
        except TimeoutError:
            logger.info("%s stopped reading %s; resetting the stream", self.peer, call.path)
            self.reset(call, h2.errors.ErrorCodes.CANCEL)
            raise StreamClosed() from None
        if call.closed:
            raise StreamClosed()

    async def send_data(self, call: Call, data: bytes) -> None:
        """Writes `data` on the call's stream as flow control allows; raises StreamClosed if it ends."""
        if call.closed:
            raise StreamClosed()
        call.progress_at = time.monotonic()
        try:
            self._ensure_headers(call)
            view = memoryview(data)
            while view:
                if not self._writable.is_set():
                    self._flush()
                    await self._wait(call, self._writable)  # the socket is full: the kernel takes it
                window = self._h2.local_flow_control_window(call.stream_id)
                if window <= 0:
                    self._flush()
                    call.window.clear()
                    await self._wait(call, call.window)
                    continue
                n = min(window, self._h2.max_outbound_frame_size, len(view))
                self._h2.send_data(call.stream_id, view[:n].tobytes())
                view = view[n:]
                call.progress_at = time.monotonic()
            self._flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as err:
            self._close_call(call)
            raise StreamClosed() from err
        if call.closed:
            raise StreamClosed()

    async def respond(self, call: Call, status: Status, message: str, response: bytes | None) -> None:
        """Ends a unary call: its response (in frames, as flow control allows), then the status."""
        if response is not None:
            try:
                await self.send_data(call, frame(response))
            except StreamClosed:
                return
        self.finish(call, status, message)

    def finish(self, call: Call, status: Status, message: str = "") -> None:
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
        self._forget_call(call)

    def refuse(self, call: Call, status: Status, message: str) -> None:
        """Ends a call before its request is read whole: the status, then a reset so that the client stops
        sending (gRPC over HTTP/2: RST_STREAM NO_ERROR after the trailers)."""
        if call.closed:
            return
        self.finish(call, status, message)
        with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self._h2.reset_stream(call.stream_id, h2.errors.ErrorCodes.NO_ERROR)
        self._flush()

    def reset(self, call: Call, code: h2.errors.ErrorCodes) -> None:
        """Ends a call at once (its client will not read a status)."""
        if call.closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self._h2.reset_stream(call.stream_id, code)
        self._forget_call(call)

    def _forget_call(self, call: Call) -> None:
        self.calls.pop(call.stream_id, None)
        self._release(call)
        self._close_call(call)
        self._note_idle()
        self._flush()

    def ping(self) -> None:
        """The keepalive ping (housekeeping); an answer clears ping_sent_at."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.ping(os.urandom(8))
            self.ping_sent_at = time.monotonic()
        self._flush()

    def goaway(self, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.NO_ERROR, why: bytes = b"") -> None:
        """Tells the client to go away, then closes the connection."""
        if self.closing:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection(error_code=code, additional_data=why or None)
        self._flush()
        self.abort()

    def stop_streams(self) -> None:
        """GOAWAY without closing: no new streams, running ones may finish (server stop)."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection()
        self._flush()

    def abort(self) -> None:
        self.closing = True
        for call in self.calls.values():
            self._close_call(call)
        if self._transport is not None:
            self._transport.close()


def _peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unix:" + (str(transport.get_extra_info("sockname")) or "")
