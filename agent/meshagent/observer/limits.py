"""The flow API server's limits: what one client (or many) may cost it, and their defaults.

Each limit is answered the way a gRPC client expects: a call over a limit ends with RESOURCE_EXHAUSTED, a
stream over the connection's concurrency is refused (RST_STREAM REFUSED_STREAM, which clients retry),
abuse of the connection (resets, pings) gets GOAWAY ENHANCE_YOUR_CALM, and a connection that stays
silent too long gets GOAWAY NO_ERROR and is closed. The defaults follow grpc-go's where grpc-go has one;
docs/flows.md lists them all with the reasons for the others.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


class LimitsError(ValueError):
    """A limit out of its range; the message names it."""


@dataclass(frozen=True)
class ServerLimits:
    # Connections held per listener (Unix socket, TCP): at the limit the longest-idle connection without
    # calls makes room, or the new one is closed with GOAWAY.
    max_connections: int = 512
    # Streams open at once on one connection (advertised in SETTINGS); one more is refused.
    max_concurrent_streams: int = 100
    # Largest request message (grpc-go: 4 MiB); a larger one ends its call and resets the stream.
    max_receive_message_bytes: int = 4 << 20
    # Bytes one connection may hold: request bodies not yet handled (beyond this, flow-control credit is
    # withheld, so the client waits) and responses not yet taken by the socket (beyond this, the
    # connection is closed: its peer stopped reading while it kept asking).
    max_connection_buffer_bytes: int = 8 << 20
    # GetFlows streams at once, server-wide (each holds a thread) and on one connection.
    max_flow_streams: int = 128
    max_flow_streams_per_connection: int = 16
    # A stream that could not send anything for this long (its client stopped reading) is reset.
    stalled_stream_seconds: float = 30.0
    # Unary calls queued or running at once; more get RESOURCE_EXHAUSTED.
    max_unary_queue: int = 64
    # Streams a client may reset (or have refused) in a burst, and refilled per second; beyond: GOAWAY
    # ENHANCE_YOUR_CALM (the rapid-reset attack, CVE-2023-44487).
    reset_burst: int = 200
    resets_per_second: float = 100.0
    # The client preface (and the TLS handshake before it) must be complete within this long.
    preface_timeout_seconds: float = 20.0
    tls_handshake_timeout_seconds: float = 20.0
    # A connection with no call for this long is closed (GOAWAY NO_ERROR; clients reconnect when needed).
    idle_timeout_seconds: float = 300.0
    # A ping every keepalive_time; a connection that does not answer within keepalive_timeout is closed.
    keepalive_time_seconds: float = 7200.0
    keepalive_timeout_seconds: float = 20.0
    # Pings a client may send (beyond the answers to ours) in a burst, refilled per second: PING is
    # answered at once, so a flood of them would otherwise cost us a write each.
    ping_burst: int = 100
    pings_per_second: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value <= 0:
                raise LimitsError(f"{f.name} must be positive, not {value}")
        if self.max_concurrent_streams > 2**31 - 1:
            raise LimitsError("max_concurrent_streams must fit HTTP/2's 31 bits")
        if self.max_flow_streams_per_connection > self.max_flow_streams:
            raise LimitsError("max_flow_streams_per_connection must not exceed max_flow_streams")
        if self.max_connection_buffer_bytes < 1 << 16:
            raise LimitsError("max_connection_buffer_bytes must be at least 64 KiB (one HTTP/2 window)")

    def replace(self, **changes: object) -> ServerLimits:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in changes.items():
            if name not in values:
                raise LimitsError(f"unknown limit {name!r}")
            values[name] = value
        return ServerLimits(**values)

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULT_LIMITS = ServerLimits()


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second: spend() is False once a client has used them up."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._at = now

    def spend(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
