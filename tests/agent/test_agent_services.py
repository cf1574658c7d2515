"""The agent with socket load-balancing on: Services and EndpointSlices from the manifest directory are
translated at connect() for processes in the agent's cgroup, flows name the Service, a Service whose
backends all go away refuses at once, and a dual-stack Service is reached on both families."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshagent.agent.config import AgentConfig
from meshagent.agent.runtime import Agent
from meshagent.datapath.socklb import cgroup2_mount
from meshagent.testing.topology import Topology

from tests.agent.test_agent_e2e import eventually, pod_manifest
from tests.socklb.conftest import _remove_cgroup
from tests.socklb.helpers import accepted, endpoint_slice, run_client

pytestmark = pytest.mark.kernel

VIP = "10.96.7.10"  # exists nowhere: only the socket hook makes it reachable


@pytest.fixture
def cgroup() -> Iterator[Path]:
    path = cgroup2_mount() / f"meshagent-agenttest-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        _remove_cgroup(path)


def service_yaml() -> str:
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: web, namespace: default}}
        spec:
          clusterIP: {VIP}
          clusterIPs: [{VIP}]
          ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
        """)


def slice_yaml(backends: list[str]) -> str:
    ports = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    conditions = {"ready": True, "serving": True, "terminating": False}
    return json.dumps(endpoint_slice("web", ports, [(ip, conditions) for ip in backends]))


def test_services_from_manifests_translate_and_show_in_flows(cgroup: Path, tmp_path: Path) -> None:
    with Topology() as topo:
        client = topo.add_pod("client", "10.244.12.10")
        backend = topo.add_pod("backend", "10.244.12.20")
        backend.serve(tcp=(8080,), log=tmp_path / "backend.log")
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        (manifests / "pods.yaml").write_text(
            "---\n".join(
                [
                    pod_manifest("client", "default", client.ip, {"app": "client"}, ipv6=client.ipv6),
                    pod_manifest("backend", "default", backend.ip, {"app": "web"}, ipv6=backend.ipv6),
                ]
            )
        )
        (manifests / "service.yaml").write_text(service_yaml())
        (manifests / "slice.yaml").write_text(slice_yaml([str(backend.ip)]))
        config = AgentConfig(
            node="node-1",
            node_netns=topo.node,
            manifests=manifests,
            manifests_poll_seconds=0.1,
            pin_dir=Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}",
            observer_socket=tmp_path / "o.sock",
            metrics_listen=None,
            health_listen=None,
            enable_socket_lb=True,
            socket_lb_cgroup=cgroup,
            cleanup_on_exit=True,
        )
        agent = Agent(config)
        agent.start()
        try:
            assert eventually(agent.ready, timeout=30), agent.status()
            result = run_client(client, "tcp", VIP, "80", "--count", "3", cgroup=cgroup)
            assert result["ok"] == 3 and result["peers"] == [f"{VIP}:80"], result
            assert accepted(tmp_path / "backend.log", client) == 3

            flows = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "meshagent.cli.main",
                    "flows",
                    "--server",
                    f"unix://{tmp_path}/o.sock",
                    "--all",
                    "-o",
                    "json",
                    "--to-ip",
                    str(backend.ip),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            records = [json.loads(line) for line in flows.stdout.splitlines() if line.strip()]
            services = [record.get("flow", record).get("destinationService") for record in records]
            flows_at_interfaces = [
                r.get("flow", r) for r in records if r.get("flow", r).get("interface", {}).get("index")
            ]
            names = {flow["interface"].get("name") for flow in flows_at_interfaces}
            assert names <= {client.host_ifname, backend.host_ifname}, names  # named in the node's namespace
            assert {"name": "web", "namespace": "default"} in services, flows.stdout[-2000:]

            # Each translation is a flow too: TRANSLATED to the backend, naming the Service.
            translated = [
                r.get("flow", r) for r in records if r.get("flow", r).get("verdict") == "TRANSLATED"
            ]
            assert translated, "no TRANSLATED flows"
            assert {t["IP"]["destination"] for t in translated} == {str(backend.ip)}
            assert all(
                t.get("destinationService") == {"name": "web", "namespace": "default"} for t in translated
            )

            # Every backend gone: new connections are refused at once, not left to hang.
            (manifests / "slice.yaml").write_text(slice_yaml([]))
            assert (
                eventually(
                    lambda: run_client(client, "tcp", VIP, "80", "--count", "1", cgroup=cgroup)["ok"] == 0
                )
                is not None
            )
            refused = run_client(client, "tcp", VIP, "80", "--count", "1", cgroup=cgroup)
            assert refused["errors"] and "ECONNREFUSED" in json.dumps(refused["errors"]), refused
            assert refused["slowest_ms"] < 500
        finally:
            agent.stop()


VIP6 = "fd00:96::7:10"


def test_a_dual_stack_service_from_manifests_is_reached_on_both_families(
    cgroup: Path, tmp_path: Path
) -> None:
    with Topology() as topo:
        client = topo.add_pod("client", "10.244.12.10", ipv6="fd00:244::12:10")
        backend = topo.add_pod("backend", "10.244.12.20", ipv6="fd00:244::12:20")
        backend.serve(tcp=(8080,), log=tmp_path / "backend.log")
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        (manifests / "pods.yaml").write_text(
            "---\n".join(
                [
                    pod_manifest("client", "default", client.ip, {"app": "client"}, ipv6=client.ipv6),
                    pod_manifest("backend", "default", backend.ip, {"app": "web"}, ipv6=backend.ipv6),
                ]
            )
        )
        dual_stack = (
            f'clusterIPs: [{VIP}, "{VIP6}"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack'
        )
        (manifests / "service.yaml").write_text(service_yaml().replace(f"clusterIPs: [{VIP}]", dual_stack))
        ports = [{"name": "http", "port": 8080, "protocol": "TCP"}]
        (manifests / "slice.yaml").write_text(
            json.dumps(endpoint_slice("web", ports, [(str(backend.ip), {"ready": True})]))
            + "\n---\n"
            + json.dumps(
                endpoint_slice("web", ports, [(str(backend.ipv6), {"ready": True})], address_type="IPv6")
            )
        )
        config = AgentConfig(
            node="node-1",
            node_netns=topo.node,
            manifests=manifests,
            manifests_poll_seconds=0.1,
            pin_dir=Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}",
            observer_socket=tmp_path / "o.sock",
            metrics_listen=None,
            health_listen=None,
            enable_socket_lb=True,
            socket_lb_cgroup=cgroup,
            cleanup_on_exit=True,
        )
        agent = Agent(config)
        agent.start()
        try:
            assert eventually(agent.ready, timeout=30), agent.status()
            over4 = run_client(client, "tcp", VIP, "80", "--count", "2", cgroup=cgroup)
            over6 = run_client(client, "tcp", VIP6, "80", "--count", "3", cgroup=cgroup)
            assert over4["ok"] == 2 and over4["peers"] == [f"{VIP}:80"], over4
            assert over6["ok"] == 3 and over6["peers"] == [f"[{VIP6}]:80"], over6
            assert accepted(tmp_path / "backend.log", client) == 2
            assert accepted(tmp_path / "backend.log", client, ipv6=True) == 3

            # The IPv6 translations are flows too, read through the flow API by the backend's IPv6.
            def translated6() -> list[dict[str, Any]]:
                flows = subprocess.run(
                    [sys.executable, "-m", "meshagent.cli.main", "flows", "--server",
                     f"unix://{tmp_path}/o.sock", "--all", "-o", "json", "--to-ip", str(backend.ipv6)],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                records = [json.loads(line) for line in flows.stdout.splitlines() if line.strip()]
                return [r.get("flow", r) for r in records if r.get("flow", r).get("verdict") == "TRANSLATED"]

            assert eventually(lambda: bool(translated6()), timeout=10) is not None, "no IPv6 TRANSLATED flows"
            translated = translated6()
            assert {t["IP"]["destination"] for t in translated} == {str(backend.ipv6)}
            assert {t["IP"]["ipVersion"] for t in translated} == {"IPv6"}
            assert all(
                t.get("destinationService") == {"name": "web", "namespace": "default"} for t in translated
            )
        finally:
            agent.stop()
