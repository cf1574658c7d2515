"""The nodes behind the relay: where each agent's Observer API is, how to call it, and calls to all of
them at once.

Flows pass through as bytes, never decoded and re-encoded, over a GetFlows call of our own (h2client.py:
grpcio's client was the relay's bottleneck); the unary calls go through a grpcio channel per node and are
decoded, since the relay aggregates their fields. A channel reconnects by itself (with gRPC's own
backoff, bounded here); a broken follow stream is reopened by the relay (service.py).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from meshagent.observer.client import ClientTls, target_for
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.observer import observer_pb2_grpc as ogrpc
from meshagent.relay.h2client import FlowCallError, H2FlowCall

_T = TypeVar("_T")
GET_FLOWS = "/observer.Observer/GetFlows"


class PeerSpecError(ValueError):
    pass


@dataclass(frozen=True)
class PeerSpec:
    """One agent: a gRPC target (unix:///path or host:port) and, if known, its node's name."""

    target: str
    name: str = ""


def parse_peer(text: str) -> PeerSpec:
    """`[NAME=]ADDRESS` where ADDRESS is a socket path, unix:///path or host:port."""
    name, sep, address = text.partition("=")
    if not sep:
        name, address = "", text
    name, address = name.strip(), address.strip()
    if sep and not name:
        raise PeerSpecError(f"peer {text!r}: empty node name before '='")
    if not address:
        raise PeerSpecError(f"peer {text!r}: no address")
    target = target_for(address)
    if not target.startswith("unix:"):
        host, colon, port = target.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise PeerSpecError(f"peer {text!r}: address must be a socket path, unix:///path or host:port")
    return PeerSpec(target=target, name=name)


class FlowCall(Protocol):
    """A GetFlows call in progress: iterate for serialized responses; cancel to end it."""

    def __iter__(self) -> Iterator[bytes]: ...

    def cancel(self) -> bool: ...


@dataclass(frozen=True)
class ChannelSettings:
    tls: ClientTls | None = None
    timeout_s: float = 5.0  # per unary call and per fixed (not following) GetFlows
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0


class Peer:
    def __init__(self, spec: PeerSpec, settings: ChannelSettings) -> None:
        self.spec = spec
        self.settings = settings
        self._learned_name = ""
        options: list[tuple[str, int | str]] = [
            ("grpc.initial_reconnect_backoff_ms", int(settings.reconnect_min_s * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(settings.reconnect_min_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(settings.reconnect_max_s * 1000)),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ]
        tls = settings.tls
        if tls is not None:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(spec.target, tls.credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(spec.target, options=options)
        self._stub = ogrpc.ObserverStub(self._channel)

    @property
    def name(self) -> str:
        """The node's name: as configured, else as the node told us, else its address."""
        return self.spec.name or self._learned_name or self.spec.target

    def learn_name(self, nodes: opb.GetNodesResponse) -> None:
        if len(nodes.nodes) == 1 and nodes.nodes[0].name:
            self._learned_name = nodes.nodes[0].name

    def close(self) -> None:
        self._channel.close()

    def flows(self, request: bytes, *, follow: bool) -> FlowCall:
        """A GetFlows call: following, it may stay quiet as long as it likes (keepalive PINGs check the
        node is there); not following, a node silent for `timeout_s` fails the call."""
        return H2FlowCall(
            self.spec.target,
            GET_FLOWS,
            request,
            tls=self.settings.tls,
            connect_timeout_s=self.settings.timeout_s,
            read_timeout_s=None if follow else self.settings.timeout_s,
        )

    def server_status(self, timeout_s: float | None = None) -> opb.ServerStatusResponse:
        resp: opb.ServerStatusResponse = self._stub.ServerStatus(
            opb.ServerStatusRequest(), timeout=timeout_s or self.settings.timeout_s
        )
        return resp

    def get_nodes(self) -> opb.GetNodesResponse:
        resp: opb.GetNodesResponse = self._stub.GetNodes(
            opb.GetNodesRequest(), timeout=self.settings.timeout_s
        )
        self.learn_name(resp)
        return resp

    def get_namespaces(self) -> opb.GetNamespacesResponse:
        resp: opb.GetNamespacesResponse = self._stub.GetNamespaces(
            opb.GetNamespacesRequest(), timeout=self.settings.timeout_s
        )
        return resp


def describe(err: BaseException) -> str:
    """A short reason for a failed call (gRPC errors carry their code and details)."""
    if isinstance(err, FlowCallError):
        return f"{err.code}: {err.details}"
    if isinstance(err, grpc.RpcError) and hasattr(err, "code"):
        code = err.code()
        details = err.details() if hasattr(err, "details") else ""
        return f"{code.name if code else 'UNKNOWN'}: {details}"
    return f"{type(err).__name__}: {err}"


class PeerPool:
    """Every peer, and calls to all of them at once. The set may change (discovery: update()); callers
    take a snapshot (`peers`) per call and compare `version` to notice a change."""

    def __init__(
        self, specs: list[PeerSpec], settings: ChannelSettings, *, allow_empty: bool = False
    ) -> None:
        if not specs and not allow_empty:
            raise PeerSpecError("the relay needs at least one peer")
        _check_unique(specs)
        self.settings = settings
        self._lock = threading.Lock()
        self._peers = [Peer(spec, settings) for spec in specs]
        self.version = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=32, thread_name_prefix="relay-peer"
        )

    @property
    def peers(self) -> list[Peer]:
        with self._lock:
            return list(self._peers)

    def update(self, specs: list[PeerSpec]) -> bool:
        """Makes the peers these; unchanged ones keep their channel. Returns whether anything changed."""
        _check_unique(specs)
        with self._lock:
            kept = {peer.spec: peer for peer in self._peers}
            new = [kept.get(spec) or Peer(spec, self.settings) for spec in specs]
            removed = [peer for peer in self._peers if peer.spec not in set(specs)]
            if not removed and len(new) == len(self._peers):
                return False
            self._peers = new
            self.version += 1
        for peer in removed:
            peer.close()
        return True

    def fan_out(self, call: Callable[[Peer], _T]) -> list[tuple[Peer, _T | BaseException]]:
        """call(peer) on every peer at once; each result or the exception it raised, in peer order."""
        futures = [(peer, self._executor.submit(call, peer)) for peer in self.peers]
        results: list[tuple[Peer, _T | BaseException]] = []
        for peer, future in futures:
            try:
                results.append((peer, future.result()))
            except Exception as err:  # reported per peer, never raised
                results.append((peer, err))
        return results

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for peer in self.peers:
            peer.close()


def _check_unique(specs: list[PeerSpec]) -> None:
    targets = [s.target for s in specs]
    duplicates = sorted({t for t in targets if targets.count(t) > 1})
    if duplicates:
        raise PeerSpecError(f"peer given twice: {', '.join(duplicates)}")
