"""Listening addresses of both families for the agent's servers (metrics, health, the flow API), with real
sockets on loopback: `:PORT` answers on IPv4 and IPv6, as an IPv6-only node's Prometheus or relay needs."""

from __future__ import annotations

import json
import urllib.request

import pytest
from meshagent.agent.health import HealthServer
from meshagent.observer.client import ObserverClient
from meshagent.observer.listen_address import ListenAddressError, split_listen_address
from meshagent.observer.metrics import FlowMetrics, MetricsServer
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.server import ObserverServer, ServerConfig, ServerConfigError
from meshagent.observer.service import ObserverService
from prometheus_client.parser import text_string_to_metric_families

from tests.observer import helpers as h


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9965", ("127.0.0.1", 9965)),
        ("[::1]:9965", ("::1", 9965)),
        ("[::]:0", ("::", 0)),
        (":9965", ("", 9965)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_addresses_of_both_families_and_every_address(address: str, expected: tuple[str, int]) -> None:
    assert split_listen_address(address) == expected


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("9965", "HOST:PORT"),
        ("127.0.0.1:http", "HOST:PORT"),
        ("127.0.0.1:70000", "HOST:PORT"),
        ("::1:9965", "in brackets, e.g. [::1]:9965"),
        ("[10.0.0.1]:9965", "not an IPv6 address"),
    ],
)
def test_a_bad_address_says_what_is_wrong(address: str, says: str) -> None:
    with pytest.raises(ListenAddressError, match=r"metrics_listen") as err:
        split_listen_address(address, setting="metrics_listen")
    assert says in str(err.value)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return bytes(answer.read())


def test_metrics_on_every_address_answer_both_families() -> None:
    metrics = FlowMetrics(node_name="node-a", version="9.9")
    server = MetricsServer(metrics.registry, ":0")
    try:
        for host in ("127.0.0.1", "[::1]"):
            text = _get(f"http://{host}:{server.port}/metrics").decode()
            names = {family.name for family in text_string_to_metric_families(text)}
            assert "meshagent_flows_processed" in names, (host, sorted(names))
    finally:
        server.stop()


def test_health_on_an_ipv6_address() -> None:
    server = HealthServer("[::1]:0", ready=lambda: True, status=lambda: {"node": "node-a"})
    server.start()
    try:
        assert json.loads(_get(f"http://[::1]:{server.port}/readyz")) == {"ready": True}
        assert json.loads(_get(f"http://[::1]:{server.port}/status")) == {"node": "node-a"}
    finally:
        server.stop()


def test_health_refuses_an_unbracketed_ipv6_address() -> None:
    with pytest.raises(ValueError, match="health_listen: write an IPv6 address in brackets"):
        HealthServer("::1:9879", ready=lambda: True, status=dict)


def test_flow_api_on_every_address_answers_both_families(serving_mode: bool) -> None:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    server = ObserverServer(
        ObserverService(pipeline),
        ServerConfig(unix_socket=None, tcp_address=":0", allow_insecure_tcp=True, front_process=serving_mode),
    )
    server.start()
    try:
        assert server.tcp_port
        for host in ("127.0.0.1", "[::1]"):
            with ObserverClient(f"{host}:{server.tcp_port}", timeout_s=5) as client:
                flows = [r for r in client.get_flows(opb.GetFlowsRequest(number=3)) if r.HasField("flow")]
            assert len(flows) == 3, host
    finally:
        server.stop(grace=None)


def test_flow_api_refuses_an_unbracketed_ipv6_address() -> None:
    config = ServerConfig(unix_socket=None, tcp_address="::1:4245", allow_insecure_tcp=True)
    with pytest.raises(ServerConfigError, match=r"in brackets, e.g. \[::1\]:4245"):
        ObserverServer(ObserverService(h.make_pipeline()), config)
