"""The Observer API on TCP with TLS: server-only TLS, and mutual TLS that refuses clients without a cert.

Certificates are made in the test with the `cryptography` package; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from meshagent.observer.client import ClientTls, ObserverClient
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.server import ObserverServer, ServerConfig, ServerConfigError, TlsConfig
from meshagent.observer.service import ObserverService

from tests.observer import helpers as h
from tests.observer.pki import SERVER_NAME


def _serve(pki: dict[str, Path], *, mutual: bool, front_process: bool) -> Iterator[int]:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    tls = TlsConfig(pki["srv_crt"], pki["srv_key"], pki["ca"] if mutual else None)
    server = ObserverServer(
        ObserverService(pipeline, tls_server_name=SERVER_NAME),
        ServerConfig(unix_socket=None, tcp_address="127.0.0.1:0", tls=tls, front_process=front_process),
    )
    server.start()
    try:
        assert server.tcp_port
        yield server.tcp_port
    finally:
        server.stop(grace=None)


@pytest.fixture
def tls_port(pki: dict[str, Path], serving_mode: bool) -> Iterator[int]:
    yield from _serve(pki, mutual=False, front_process=serving_mode)


@pytest.fixture
def mtls_port(pki: dict[str, Path], serving_mode: bool) -> Iterator[int]:
    yield from _serve(pki, mutual=True, front_process=serving_mode)


def _flows(port: int, tls: ClientTls) -> int:
    with ObserverClient(f"127.0.0.1:{port}", tls=tls, timeout_s=5) as c:
        return sum(1 for r in c.get_flows(opb.GetFlowsRequest(number=5)) if r.HasField("flow"))


def test_server_tls_without_client_cert(tls_port: int, pki: dict[str, Path]) -> None:
    assert _flows(tls_port, ClientTls(pki["ca"], server_name=SERVER_NAME)) == 5
    with ObserverClient(f"127.0.0.1:{tls_port}", tls=ClientTls(pki["ca"]), timeout_s=5) as c:
        node = c.get_nodes().nodes[0]
    assert node.tls.enabled and node.tls.server_name == SERVER_NAME


def test_server_tls_refuses_plaintext_client(tls_port: int) -> None:
    with ObserverClient(f"127.0.0.1:{tls_port}", timeout_s=2) as c, pytest.raises(grpc.RpcError) as info:
        c.server_status()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_tls_unknown_ca_is_refused(tls_port: int, pki: dict[str, Path]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _flows(tls_port, ClientTls(pki["rogue_crt"], server_name=SERVER_NAME))  # not our CA
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_with_client_cert(mtls_port: int, pki: dict[str, Path]) -> None:
    tls = ClientTls(pki["ca"], pki["cli_crt"], pki["cli_key"], SERVER_NAME)
    assert _flows(mtls_port, tls) == 5


def test_mutual_tls_without_or_with_foreign_client_cert_is_refused(
    mtls_port: int, pki: dict[str, Path]
) -> None:
    for tls in (
        ClientTls(pki["ca"], server_name=SERVER_NAME),
        ClientTls(pki["ca"], pki["rogue_crt"], pki["rogue_key"], SERVER_NAME),
    ):
        with pytest.raises(grpc.RpcError) as info:
            _flows(mtls_port, tls)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_tcp_needs_explicit_opt_in() -> None:
    with pytest.raises(ServerConfigError, match="allow_insecure_tcp"):
        ObserverServer(
            ObserverService(h.make_pipeline()), ServerConfig(unix_socket=None, tcp_address="127.0.0.1:0")
        )
