"""The observer.Observer gRPC service (Hubble-compatible) over a FlowPipeline's ring.

Handlers work on request bytes and return (or stream) encoded messages: the server (h2server.py) speaks
gRPC, this module knows the Observer API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from meshagent import __version__
from meshagent.observer.api import parse_message
from meshagent.observer.convert import PreparedFlow
from meshagent.observer.grpcwire import RpcError, Status, frame, pack_prefix
from meshagent.observer.h2server import ServerStream
from meshagent.observer.pipeline import FlowPipeline
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.relay import relay_pb2 as rpb
from meshagent.observer.query import InvalidRequest, LostNotice, QueryItem, parse_request, run_query_batches
from meshagent.observer.wire import encode_flow_response, flow_response_bytes, node_name_field

logger = logging.getLogger(__name__)


_M = TypeVar("_M", bound=Message)


class ObserverService:
    def __init__(
        self,
        pipeline: FlowPipeline,
        *,
        version: str = f"meshagent {__version__}",
        address: str = "",
        tls_server_name: str = "",
    ) -> None:
        self._pipeline = pipeline
        self._version = version
        self._address = address
        self._tls_server_name = tls_server_name
        self._node_tail = node_name_field(pipeline.node_name)
        self._lock = threading.Lock()
        self._follower_lost = 0
        self._streams = 0
        # Called with the count when a following client loses flows to ring overwrites (metrics hook).
        self.on_follower_loss: Callable[[int], None] | None = None

    @property
    def follower_lost(self) -> int:
        return self._follower_lost

    @property
    def active_streams(self) -> int:
        """GetFlows calls being served right now (past validation)."""
        return self._streams

    # -- GetFlows ---------------------------------------------------------------------------------------
    @property
    def node_tail(self) -> bytes:
        """GetFlowsResponse.node_name, encoded (observer/wire.py)."""
        return self._node_tail

    def get_flows(self, request: bytes, stream: ServerStream) -> None:
        """Streams what the request asks for; runs on the call's own worker thread."""
        # One write (and one wake of the I/O loop) per batch.
        self.serve_flows(
            request, stream.is_active, lambda items: stream.write(self._encode(items)), stream.peer
        )

    def serve_flows(
        self,
        request: bytes,
        active: Callable[[], bool],
        send: Callable[[list[QueryItem]], None],
        peer: str = "",
    ) -> None:
        """GetFlows for any transport: `send` takes each batch of query items (until `active()` turns
        False or the query is done). Raises RpcError for an invalid request."""
        try:
            query = parse_request(parse_message(opb.GetFlowsRequest, request))
        except InvalidRequest as err:
            raise RpcError(Status.INVALID_ARGUMENT, str(err)) from err
        logger.debug("GetFlows from %s: %s", peer, query)
        batches = run_query_batches(self._pipeline.ring, query, active=active, now_ns=time.time_ns)
        with self._lock:
            self._streams += 1
        try:
            for items in batches:
                send(items)
        finally:
            with self._lock:
                self._streams -= 1

    def _encode(self, items: list[QueryItem]) -> bytes:
        """The framed responses for a batch of query items, concatenated."""
        parts: list[bytes] = []
        add = parts.append
        tail = self._node_tail
        for item in items:
            if type(item) is PreparedFlow:
                # Straight from the prepared flow (no Flow message is built). Not kept: another reader
                # encodes again, cheaper than holding the bytes of every flow in the ring.
                msg = flow_response_bytes(item, tail)
                add(pack_prefix(0, len(msg)))
                add(msg)
            else:
                add(self.framed_other(item))
        return b"".join(parts)

    def framed_other(self, item: QueryItem) -> bytes:
        """The framed response of an item that is not a datapath flow (lost notice, built flow, marker)."""
        if isinstance(item, LostNotice):
            self._count_follower_loss(item.count)
            lost = pb.LostEvent(source=pb.HUBBLE_RING_BUFFER, num_events_lost=item.count)
            resp = opb.GetFlowsResponse(lost_events=lost, node_name=self._pipeline.node_name)
            return frame(resp.SerializeToString())
        if item.flow is not None:
            return frame(encode_flow_response(item.flow, self._node_tail))
        resp = opb.GetFlowsResponse(lost_events=item.lost, node_name=self._pipeline.node_name)
        resp.time.FromNanoseconds(item.time_ns)
        return frame(resp.SerializeToString())

    def _count_follower_loss(self, count: int) -> None:
        with self._lock:
            self._follower_lost += count
        if self.on_follower_loss is not None:
            self.on_follower_loss(count)

    # -- unary ------------------------------------------------------------------------------------------
    def server_status(self) -> opb.ServerStatusResponse:
        s = self._pipeline.stats()
        ring = self._pipeline.ring
        resp = opb.ServerStatusResponse(
            num_flows=ring.num_flows,
            max_flows=ring.capacity,
            seen_flows=s.seen_flows,
            uptime_ns=s.uptime_ns,
            version=self._version,
            flows_rate=s.flows_rate,
            lost_events_datapath=s.lost_datapath,
            lost_events_queue=s.lost_queue,
            ring_overwritten=s.ring_overwritten,
            lost_events_followers=self.follower_lost,
        )
        resp.num_connected_nodes.value = 1
        resp.num_unavailable_nodes.value = 0
        return resp

    def get_nodes(self) -> opb.GetNodesResponse:
        s = self._pipeline.stats()
        ring = self._pipeline.ring
        node = opb.Node(
            name=self._pipeline.node_name,
            version=self._version,
            address=self._address,
            state=rpb.NODE_CONNECTED,
            uptime_ns=s.uptime_ns,
            num_flows=ring.num_flows,
            max_flows=ring.capacity,
            seen_flows=s.seen_flows,
        )
        node.tls.enabled = bool(self._tls_server_name)
        node.tls.server_name = self._tls_server_name
        return opb.GetNodesResponse(nodes=[node])

    def get_namespaces(self) -> opb.GetNamespacesResponse:
        names: set[str] = set()
        for e in self._pipeline.ring.snapshot():
            meta = e.metadata
            if meta is not None:
                if meta.source.namespace:
                    names.add(meta.source.namespace)
                if meta.destination.namespace:
                    names.add(meta.destination.namespace)
        return opb.GetNamespacesResponse(namespaces=[opb.Namespace(namespace=n) for n in sorted(names)])
