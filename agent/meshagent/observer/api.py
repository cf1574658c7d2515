"""The observer.Observer gRPC API as methods by path, for any server of it (a node's agent, the relay).

Handlers work on request bytes and return (or stream) encoded messages; the h2 server speaks gRPC.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from google.protobuf.message import DecodeError, Message

from meshagent.observer.grpcwire import RpcError, Status
from meshagent.observer.h2server import CallInfo, Method, ServerStream
from meshagent.observer.proto.observer import observer_pb2 as opb

SERVICE_NAME = "observer.Observer"

_M = TypeVar("_M", bound=Message)


def parse_message(message_type: type[_M], request: bytes) -> _M:
    """A request message, or INVALID_ARGUMENT saying why it is not one."""
    try:
        return message_type.FromString(request)
    except DecodeError as err:
        raise RpcError(Status.INVALID_ARGUMENT, f"cannot parse {message_type.__name__}: {err}") from err


class ObserverApi(Protocol):
    def get_flows(self, request: bytes, stream: ServerStream) -> None: ...
    def server_status(self) -> opb.ServerStatusResponse: ...
    def get_nodes(self) -> opb.GetNodesResponse: ...
    def get_namespaces(self) -> opb.GetNamespacesResponse: ...


def observer_methods(api: ObserverApi) -> dict[str, Method]:
    """observer.Observer's methods by their gRPC path. Unary requests carry nothing we use (Hubble's
    ServerStatus/GetNodes/GetNamespaces requests are empty), but each must still parse."""

    def unary(request_type: type[Message], respond: Callable[[], Message]) -> Method:
        def handler(request: bytes, info: CallInfo) -> bytes:
            parse_message(request_type, request)
            return respond().SerializeToString()

        return Method(unary=handler)

    return {
        f"/{SERVICE_NAME}/GetFlows": Method(stream=api.get_flows),
        f"/{SERVICE_NAME}/ServerStatus": unary(opb.ServerStatusRequest, api.server_status),
        f"/{SERVICE_NAME}/GetNodes": unary(opb.GetNodesRequest, api.get_nodes),
        f"/{SERVICE_NAME}/GetNamespaces": unary(opb.GetNamespacesRequest, api.get_namespaces),
    }
