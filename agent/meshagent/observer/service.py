"""The observer.Observer gRPC service (Hubble-compatible) over a FlowPipeline's ring."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from meshagent import __version__
from meshagent.observer.pipeline import FlowPipeline
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.relay import relay_pb2 as rpb
from meshagent.observer.query import InvalidRequest, LostNotice, parse_request, run_query

logger = logging.getLogger(__name__)

SERVICE_NAME = "observer.Observer"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


# Field tags of GetFlowsResponse (length-delimited): flow=1, lost_events=3, node_name=1000, time=1001.
_TAG_FLOW = _varint((1 << 3) | 2)
_TAG_LOST = _varint((3 << 3) | 2)
_TAG_NODE = _varint((1000 << 3) | 2)
_TAG_TIME = _varint((1001 << 3) | 2)


def encode_flow_response(flow: pb.Flow, node_tail: bytes) -> bytes:
    """GetFlowsResponse{flow, node_name, time} encoded directly: avoids copying the flow into a wrapper."""
    body = flow.SerializeToString()
    ts = flow.time.SerializeToString()
    return b"".join((_TAG_FLOW, _varint(len(body)), body, node_tail, _TAG_TIME, _varint(len(ts)), ts))


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
        node = pipeline.node_name.encode()
        self._node_tail = _TAG_NODE + _varint(len(node)) + node if node else b""
        self._lock = threading.Lock()
        self._follower_lost = 0
        # Called with the count when a following client loses flows to ring overwrites (metrics hook).
        self.on_follower_loss: Callable[[int], None] | None = None

    @property
    def follower_lost(self) -> int:
        return self._follower_lost

    # -- GetFlows ---------------------------------------------------------------------------------------
    def GetFlows(self, request: opb.GetFlowsRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            query = parse_request(request)
        except InvalidRequest as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            return
        logger.debug("GetFlows from %s: %s", context.peer(), query)
        node_name = self._pipeline.node_name
        for item in run_query(self._pipeline.ring, query, active=context.is_active, now_ns=time.time_ns):
            if isinstance(item, LostNotice):
                with self._lock:
                    self._follower_lost += item.count
                if self.on_follower_loss is not None:
                    self.on_follower_loss(item.count)
                lost = pb.LostEvent(source=pb.HUBBLE_RING_BUFFER, num_events_lost=item.count)
                yield opb.GetFlowsResponse(lost_events=lost, node_name=node_name).SerializeToString()
            elif item.prepared is not None:
                # Encoded once, whichever client asks first; later readers (followers, --last) reuse it.
                prepared = item.prepared
                wire = prepared.wire
                if wire is None:
                    wire = encode_flow_response(prepared.flow(), self._node_tail)
                    prepared.wire = wire
                yield wire
            elif item.flow is not None:
                yield encode_flow_response(item.flow, self._node_tail)
            elif item.lost is not None:
                resp = opb.GetFlowsResponse(lost_events=item.lost, node_name=node_name)
                resp.time.FromNanoseconds(item.time_ns)
                yield resp.SerializeToString()

    # -- unary ------------------------------------------------------------------------------------------
    def ServerStatus(
        self, request: opb.ServerStatusRequest, context: grpc.ServicerContext
    ) -> opb.ServerStatusResponse:
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

    def GetNodes(self, request: opb.GetNodesRequest, context: grpc.ServicerContext) -> opb.GetNodesResponse:
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

    def GetNamespaces(
        self, request: opb.GetNamespacesRequest, context: grpc.ServicerContext
    ) -> opb.GetNamespacesResponse:
        names: set[str] = set()
        for e in self._pipeline.ring.snapshot():
            meta = e.metadata
            if meta is not None:
                if meta.source.namespace:
                    names.add(meta.source.namespace)
                if meta.destination.namespace:
                    names.add(meta.destination.namespace)
        return opb.GetNamespacesResponse(namespaces=[opb.Namespace(namespace=n) for n in sorted(names)])


def generic_handler(service: ObserverService) -> grpc.GenericRpcHandler:
    """Handlers for observer.Observer; GetFlows responses are pre-encoded bytes (see encode_flow_response)."""

    def passthrough(b: bytes) -> bytes:
        return b

    handlers: dict[str, Any] = {
        "GetFlows": grpc.unary_stream_rpc_method_handler(
            service.GetFlows,
            request_deserializer=opb.GetFlowsRequest.FromString,
            response_serializer=passthrough,
        ),
        "ServerStatus": grpc.unary_unary_rpc_method_handler(
            service.ServerStatus,
            request_deserializer=opb.ServerStatusRequest.FromString,
            response_serializer=opb.ServerStatusResponse.SerializeToString,
        ),
        "GetNodes": grpc.unary_unary_rpc_method_handler(
            service.GetNodes,
            request_deserializer=opb.GetNodesRequest.FromString,
            response_serializer=opb.GetNodesResponse.SerializeToString,
        ),
        "GetNamespaces": grpc.unary_unary_rpc_method_handler(
            service.GetNamespaces,
            request_deserializer=opb.GetNamespacesRequest.FromString,
            response_serializer=opb.GetNamespacesResponse.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
