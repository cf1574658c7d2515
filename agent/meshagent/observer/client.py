"""Client side of the Observer API (for `meshagent flows` and `status`): generated stubs over a channel."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshagent.observer.listen import DEFAULT_SOCKET
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.observer import observer_pb2_grpc as ogrpc


class ClientError(RuntimeError):
    pass


@dataclass(frozen=True)
class ClientTls:
    ca_file: Path
    cert_file: Path | None = None  # client certificate, when the server verifies clients
    key_file: Path | None = None
    server_name: str | None = None  # overrides the name checked against the server certificate

    def credentials(self) -> grpc.ChannelCredentials:
        try:
            ca = self.ca_file.read_bytes()
            cert = self.cert_file.read_bytes() if self.cert_file else None
            key = self.key_file.read_bytes() if self.key_file else None
        except OSError as err:
            raise ClientError(f"cannot read TLS material: {err}") from err
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def target_for(server: str | None) -> str:
    """'unix:///p', '/p' (a socket path) or 'host:port' into a gRPC target; None means the local socket."""
    if not server:
        return f"unix://{DEFAULT_SOCKET}"
    if server.startswith("/"):
        return f"unix://{server}"
    return server


class ObserverClient:
    def __init__(self, server: str | None = None, *, tls: ClientTls | None = None, timeout_s: float = 10.0):
        target = target_for(server)
        options = []
        if tls is not None and tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        if tls is not None:
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(target)
        self._stub = ogrpc.ObserverStub(self._channel)
        self._timeout = timeout_s

    def __enter__(self) -> ObserverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def get_flows(
        self, request: opb.GetFlowsRequest, *, follow_timeout_s: float | None = None
    ) -> Iterator[opb.GetFlowsResponse]:
        timeout = follow_timeout_s if request.follow else self._timeout
        call = self._stub.GetFlows(request, timeout=timeout)
        try:
            yield from call
        finally:
            call.cancel()

    def server_status(self) -> opb.ServerStatusResponse:
        resp: opb.ServerStatusResponse = self._stub.ServerStatus(
            opb.ServerStatusRequest(), timeout=self._timeout
        )
        return resp

    def get_nodes(self) -> opb.GetNodesResponse:
        resp: opb.GetNodesResponse = self._stub.GetNodes(opb.GetNodesRequest(), timeout=self._timeout)
        return resp

    def get_namespaces(self) -> opb.GetNamespacesResponse:
        resp: opb.GetNamespacesResponse = self._stub.GetNamespaces(
            opb.GetNamespacesRequest(), timeout=self._timeout
        )
        return resp
