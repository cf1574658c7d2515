"""The relay finding the agents through the Kubernetes API (the local emulator, the official client): their
running pods by label, one node each; a node that appears is followed, one that goes is reported gone,
and an API server outage keeps the peers the relay has."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from meshagent.observer.client import ObserverClient
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.relay import relay_pb2 as rpb
from meshagent.observer.server import ObserverServer, ServerConfig
from meshagent.observer.service import ObserverService
from meshagent.relay.discovery import Discovery, peer_specs
from meshagent.relay.peers import ChannelSettings
from meshagent.relay.server import RelayConfig, RelayServer
from meshagent.sources.agent_pods import AgentPod, list_agent_pods
from meshagent.sources.kube_client import load_api_client

from tests.observer import helpers as h
from tests.relay.helpers import fast_settings
from tests.sources.k8s_emulator import KubeEmulator
from tests.waiting import wait_until

NAMESPACE = "meshagent"
SELECTOR = "app.kubernetes.io/name=meshagent,app.kubernetes.io/component=agent"
# Each agent on its own loopback address, all on one port, as agents on their nodes' addresses.
ADDRESSES = {"node-a": "127.0.0.2", "node-b": "127.0.0.3"}


def agent_pod(node: str, *, phase: str = "Running", app: str = "meshagent") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"meshagent-{node}",
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/component": "agent"},
        },
        "spec": {"nodeName": node, "hostNetwork": True},
        "status": {"phase": phase, "podIP": ADDRESSES.get(node, "127.0.0.9")},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def emulator() -> Iterator[KubeEmulator]:
    emu = KubeEmulator()
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def test_running_agent_pods_become_peers(emulator: KubeEmulator) -> None:
    emulator.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    emulator.apply(agent_pod("node-a"))
    emulator.apply(agent_pod("node-b", phase="Pending"))
    emulator.apply(agent_pod("node-c", app="something-else"))
    api = load_api_client(host=emulator.url)
    assert list_agent_pods(api, NAMESPACE, SELECTOR) == [AgentPod("node-a", "127.0.0.2")]
    specs = peer_specs([("node-a", "10.0.0.1"), ("node-b", "fd00::1"), ("node-a", "10.0.0.1")], 4244)
    assert [(s.name, s.target) for s in specs] == [("node-a", "10.0.0.1:4244"), ("node-b", "[fd00::1]:4244")]


def test_the_relay_follows_nodes_as_they_come_and_go(emulator: KubeEmulator, tmp_path: Path) -> None:
    emulator.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    emulator.apply(agent_pod("node-a"))
    port = free_port()
    with ExitStack() as stack:
        pipelines = {}
        for node, address in ADDRESSES.items():
            pipeline = h.make_pipeline(node_name=node)
            server = ObserverServer(
                ObserverService(pipeline),
                ServerConfig(unix_socket=None, tcp_address=f"{address}:{port}", allow_insecure_tcp=True),
            )
            server.start()
            stack.callback(server.stop, None)
            pipelines[node] = pipeline
        relay = RelayServer(
            RelayConfig(
                peers=(),
                unix_socket=tmp_path / "relay.sock",
                channel=ChannelSettings(timeout_s=3.0, reconnect_min_s=0.1, reconnect_max_s=0.5),
                relay=fast_settings(),
            )
        )
        relay.start()
        stack.callback(relay.stop, None)
        api = load_api_client(host=emulator.url)

        def lister() -> list[tuple[str, str]]:
            return [(p.node, p.address) for p in list_agent_pods(api, NAMESPACE, SELECTOR, timeout_s=2)]

        discovery = Discovery(relay.pool, lister, port=port, interval_s=0.2)
        discovery.start()
        stack.callback(discovery.stop)
        client = stack.enter_context(ObserverClient(f"unix://{tmp_path / 'relay.sock'}"))
        assert [n.name for n in client.get_nodes().nodes] == ["node-a"]

        got: list[opb.GetFlowsResponse] = []
        stream = client.get_flows(opb.GetFlowsRequest(follow=True), follow_timeout_s=30)

        def reader() -> None:
            for r in stream:
                got.append(r)
                if r.HasField("node_status") and r.node_status.state_change == rpb.NODE_GONE:
                    return

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()

        def states() -> list[tuple[int, list[str]]]:
            return [
                (r.node_status.state_change, list(r.node_status.node_names))
                for r in got
                if r.HasField("node_status")
            ]

        assert wait_until(lambda: (rpb.NODE_CONNECTED, ["node-a"]) in states(), timeout=10)
        emulator.apply(agent_pod("node-b"))  # a new node's agent is scheduled
        assert wait_until(lambda: (rpb.NODE_CONNECTED, ["node-b"]) in states(), timeout=10), states()
        assert wait_until(lambda: pipelines["node-b"].ring.waiting >= 1, timeout=10)
        pipelines["node-b"].on_event(h.event(dport=6060))
        assert wait_until(lambda: any(r.HasField("flow") and r.flow.node_name == "node-b" for r in got), 10)
        assert [n.name for n in client.get_nodes().nodes] == ["node-a", "node-b"]

        # The API server goes away: the relay keeps the agents it knows.
        emulator.stop()
        assert wait_until(lambda: discovery.last_error is not None, timeout=10)
        assert [n.name for n in client.get_nodes().nodes] == ["node-a", "node-b"]
        emulator.start()
        emulator.delete("Pod", NAMESPACE, "meshagent-node-b")  # its node is drained
        thread.join(timeout=15)
        assert (rpb.NODE_GONE, ["node-b"]) in states()
        assert [n.name for n in client.get_nodes().nodes] == ["node-a"]
