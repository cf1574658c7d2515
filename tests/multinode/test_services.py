"""Services across nodes through the socket load-balancer: each node's agent translates its own pods'
connections (its own cgroup) to backends on any node, by the route's weights; when a backend's node goes
away (its pods deleted, the EndpointSlice without them) new connections stop choosing it."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from meshagent.datapath.socklb import cgroup2_mount
from meshagent.testing.agents import NodeAgent, start_agents
from meshagent.testing.cluster import ClusterTopology
from meshagent.testing.topology import Pod

from tests.agent.test_agent_e2e import pod_manifest
from tests.socklb.conftest import _remove_cgroup
from tests.socklb.helpers import accepted, endpoint_slice, run_client, service, tcp_route
from tests.waiting import seconds_until

pytestmark = pytest.mark.kernel

VIP = "10.96.9.10"  # exists nowhere: only the socket hook of the client's node makes it reachable
TCP80 = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
SLICE_PORTS = [{"name": "http", "protocol": "TCP", "port": 8080}]
READY = {"ready": True, "serving": True, "terminating": False}
EFFECT_TIMEOUT = 10.0


@dataclass
class ServiceCluster:
    cluster: ClusterTopology
    agents: list[NodeAgent]
    cgroups: list[Path]
    pods: dict[str, Pod]
    logs: dict[str, Path]
    manifests: Path

    def connect(self, count: int) -> dict[str, Any]:
        """`count` connections to the VIP from the client on node-1, in node-1's cgroup."""
        return run_client(
            self.pods["client"], "tcp", VIP, "80", "--count", str(count), cgroup=self.cgroups[0]
        )

    def accepted(self, backend: str) -> int:
        return accepted(self.logs[backend], self.pods["client"])

    def write(self, name: str, *objects: dict[str, Any]) -> None:
        # JSON is YAML: one document per object.
        (self.manifests / name).write_text("".join(f"---\n{json.dumps(obj)}\n" for obj in objects))


def split(blue: int, green: int, green_endpoints: list[str]) -> list[dict[str, Any]]:
    return [
        service("shop", VIP, TCP80),
        service("shop-blue", "10.96.9.11", TCP80),
        service("shop-green", "10.96.9.12", TCP80),
        endpoint_slice("shop-blue", SLICE_PORTS, [("10.244.1.11", READY)]),
        endpoint_slice("shop-green", SLICE_PORTS, [(ip, READY) for ip in green_endpoints]),
        tcp_route("shop", "shop", 80, [("shop-blue", blue), ("shop-green", green)]),
    ]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[ServiceCluster]:
    """client and blue on node-1; green on node-2; an agent with the socket load-balancer on each."""
    run = uuid.uuid4().hex[:8]
    cgroups = [cgroup2_mount() / f"meshagent-mn-{run}-{i}" for i in (1, 2)]
    for path in cgroups:
        path.mkdir()
    try:
        with ClusterTopology(2) as cluster:
            first, second = cluster.nodes
            pods = {
                "client": first.add_pod("client", "10.244.1.10"),
                "blue": first.add_pod("blue", "10.244.1.11"),
                "green": second.add_pod("green", "10.244.2.11"),
            }
            logs = {name: tmp_path / f"{name}.log" for name in ("blue", "green")}
            for name, log in logs.items():
                pods[name].serve(tcp=(8080,), log=log)
            manifests = tmp_path / "manifests"
            manifests.mkdir()
            placed = {"client": first.name, "blue": first.name, "green": second.name}
            (manifests / "cluster.yaml").write_text(
                "---\n".join(
                    [
                        cluster.manifests(),
                        *(
                            pod_manifest(
                                name, "default", pod.ip, {"app": name}, node=placed[name], ipv6=pod.ipv6
                            )
                            for name, pod in pods.items()
                        ),
                    ]
                )
            )
            agents = [
                NodeAgent(
                    node,
                    tmp_path,
                    manifests=manifests,
                    extra_args=("--socket-lb", "--socket-lb-cgroup", str(cgroup)),
                )
                for node, cgroup in zip(cluster.nodes, cgroups, strict=True)
            ]
            state = ServiceCluster(cluster, agents, cgroups, pods, logs, manifests)
            state.write("services.yaml", *split(75, 25, ["10.244.2.11"]))
            try:
                start_agents(agents)
                yield state
            finally:
                for agent in agents:
                    agent.close()
    finally:
        for path in cgroups:
            _remove_cgroup(path)


def test_weights_split_connections_across_nodes_and_a_gone_node_is_left_out(services: ServiceCluster) -> None:
    # The agents are ready before their first Service compile lands: wait for the VIP to answer.
    assert seconds_until(lambda: services.connect(1)["ok"] == 1, EFFECT_TIMEOUT) is not None
    before = {name: services.accepted(name) for name in ("blue", "green")}
    total = 200
    result = services.connect(total)
    assert result["ok"] == total, result
    blue = services.accepted("blue") - before["blue"]
    green = services.accepted("green") - before["green"]
    assert blue + green == total
    # Binomial(200, 0.75): a bound of 5 standard deviations (~31 connections); 50/50 is far outside it.
    assert abs(blue - 0.75 * total) < 5 * math.sqrt(total * 0.75 * 0.25), (blue, green)
    assert green > 0, "the backend on the other node was never chosen"

    # node-2 goes away: its pod is deleted and the EndpointSlice controller drops its address.
    services.write("services.yaml", *split(75, 25, []))
    took = seconds_until(
        lambda: services.connect(20)["ok"] == 20 and services.accepted("green") == before["green"] + green,
        EFFECT_TIMEOUT,
        interval=0.2,
    )
    assert took is not None, "connections still went to the gone node's backend"
    settled_blue = services.accepted("blue")
    assert services.connect(40)["ok"] == 40
    assert services.accepted("blue") == settled_blue + 40
    assert services.accepted("green") == before["green"] + green
