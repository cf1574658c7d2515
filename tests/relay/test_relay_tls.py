"""The relay with the agent's TLS options: mutual TLS to its clients and to the agents behind it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from meshagent.observer.client import ClientTls, ObserverClient
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.server import ObserverServer, ServerConfig, TlsConfig
from meshagent.observer.service import ObserverService
from meshagent.relay.peers import ChannelSettings, PeerSpec
from meshagent.relay.server import RelayConfig, RelayServer

from tests.observer import helpers as h
from tests.observer.test_tls import SERVER_NAME


def test_mutual_tls_on_both_sides(pki: dict[str, Path]) -> None:
    mutual = TlsConfig(pki["srv_crt"], pki["srv_key"], pki["ca"])
    pipeline = h.make_pipeline(node_name="node-a")
    pipeline.on_events(h.sample_events())
    node = ObserverServer(
        ObserverService(pipeline), ServerConfig(unix_socket=None, tcp_address="127.0.0.1:0", tls=mutual)
    )
    node.start()
    try:
        as_client = ClientTls(pki["ca"], pki["cli_crt"], pki["cli_key"], SERVER_NAME)
        relay = RelayServer(
            RelayConfig(
                peers=(PeerSpec(f"127.0.0.1:{node.tcp_port}", "node-a"),),
                tcp_address="127.0.0.1:0",
                tls=mutual,
                channel=ChannelSettings(tls=as_client, timeout_s=5),
            )
        )
        relay.start()
        try:
            target = f"127.0.0.1:{relay.tcp_port}"
            with ObserverClient(target, tls=as_client, timeout_s=5) as c:
                flows = [r for r in c.get_flows(opb.GetFlowsRequest()) if r.HasField("flow")]
                assert len(flows) == 10
                assert c.server_status().num_connected_nodes.value == 1
            # Without a client certificate the relay refuses, as the agent does.
            with (
                ObserverClient(target, tls=ClientTls(pki["ca"], server_name=SERVER_NAME), timeout_s=5) as c,
                pytest.raises(grpc.RpcError),
            ):
                c.server_status()
        finally:
            relay.stop(grace=None)
    finally:
        node.stop(grace=None)


def test_a_relay_without_the_agents_client_certificate_reports_them_unavailable(pki: dict[str, Path]) -> None:
    mutual = TlsConfig(pki["srv_crt"], pki["srv_key"], pki["ca"])
    pipeline = h.make_pipeline(node_name="node-a")
    node = ObserverServer(
        ObserverService(pipeline), ServerConfig(unix_socket=None, tcp_address="127.0.0.1:0", tls=mutual)
    )
    node.start()
    try:
        relay = RelayServer(
            RelayConfig(
                peers=(PeerSpec(f"127.0.0.1:{node.tcp_port}", "node-a"),),
                tcp_address="127.0.0.1:0",
                allow_insecure_tcp=True,
                channel=ChannelSettings(tls=ClientTls(pki["ca"], server_name=SERVER_NAME), timeout_s=3),
            )
        )
        relay.start()
        try:
            with ObserverClient(f"127.0.0.1:{relay.tcp_port}", timeout_s=10) as c:
                status = c.server_status()
            assert list(status.unavailable_nodes) == ["node-a"]
        finally:
            relay.stop(grace=None)
    finally:
        node.stop(grace=None)
