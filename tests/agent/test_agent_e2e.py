"""The whole agent, end to end: objects from a directory or the (emulated) Kubernetes API change what
real packets between pods may do; flows name the policy; metrics count what happened."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from meshagent.agent.config import AgentConfig
from meshagent.agent.runtime import Agent
from meshagent.testing.topology import Pod, Topology
from prometheus_client.parser import text_string_to_metric_families

from tests.sources.k8s_emulator import KubeEmulator
from tests.waiting import seconds_until

pytestmark = pytest.mark.kernel

NODE = "node-1"
EFFECT_TIMEOUT = 5.0  # a change must reach the kernel within this (directory polled every 0.1 s)


def eventually(check: Callable[[], bool], timeout: float = EFFECT_TIMEOUT) -> float | None:
    """Seconds until check() held, or None if it never did."""
    return seconds_until(check, timeout, interval=0.05)


def pod_manifest(
    name: str, namespace: str, ip: object, labels: dict[str, str], node: str = NODE, ipv6: object = None
) -> str:
    label_text = ", ".join(f"{k}: {v}" for k, v in labels.items())
    # A dual-stack pod lists both addresses, as the API server reports them.
    addresses = f', podIPs: [{{ip: "{ip}"}}, {{ip: "{ipv6}"}}]' if ipv6 is not None else ""
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, namespace: {namespace}, labels: {{{label_text}}}}}
        spec:
          nodeName: {node}
          containers: [{{name: main, image: app, ports: [{{name: http, containerPort: 80}}]}}]
        status: {{podIP: "{ip}"{addresses}}}
        """)


def db_policy(ports: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: db-from-web, namespace: shop}}
        spec:
          podSelector: {{matchLabels: {{app: db}}}}
          ingress:
          - from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]
            ports: {ports}
        """)


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[tuple[Topology, Pod, Pod, Pod]]:
    with Topology() as topo:
        web = topo.add_pod("web", "10.244.6.10")
        db = topo.add_pod("db", "10.244.6.20")
        other = topo.add_pod("other", "10.244.6.30")
        db.serve(tcp=(80, 81, 5432))
        yield topo, web, db, other


def start_agent(topo: Topology, tmp_path: Path, **settings: Any) -> Agent:
    config = AgentConfig(
        node=NODE,
        node_netns=topo.node,
        pin_dir=Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}",
        observer_socket=tmp_path / "observer.sock",
        metrics_listen="127.0.0.1:0",
        health_listen="127.0.0.1:0",
        manifests_poll_seconds=0.1,
        cleanup_on_exit=True,
        **settings,
    )
    agent = Agent(config)
    agent.start()
    assert eventually(agent.ready, timeout=20), agent.status()
    return agent


def allowed(client: Pod, server: Pod, port: int, *, ipv6: bool = False) -> bool:
    """One TCP exchange to the server's IPv4 address (or its IPv6 one) went through."""
    address = server.ipv6 if ipv6 else server.ip
    assert address is not None, f"pod {server.name} has no IPv6 address"
    # A loaded 2-core machine can take a good part of a second to answer even an allowed exchange.
    return bool(client.probe("tcp", address, port, timeout=1.0)["ok"])


def test_directory_drives_enforcement_flows_and_metrics(
    pods: tuple[Topology, Pod, Pod, Pod], tmp_path: Path
) -> None:
    topo, web, db, other = pods
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
    (manifests / "pods.yaml").write_text(
        "---\n".join(
            [
                pod_manifest("web", "shop", web.ip, {"app": "web"}, ipv6=web.ipv6),
                pod_manifest("db", "shop", db.ip, {"app": "db"}, ipv6=db.ipv6),
                pod_manifest("other", "shop", other.ip, {"app": "other"}, ipv6=other.ipv6),
            ]
        )
    )
    (manifests / "policy.yaml").write_text(db_policy("[{port: 80}]"))
    agent = start_agent(topo, tmp_path, manifests=manifests)
    try:
        health = urllib.request.urlopen(f"http://127.0.0.1:{agent.health_port}/readyz", timeout=5)
        assert health.status == 200

        assert allowed(web, db, 80)
        assert not allowed(web, db, 81)
        assert not allowed(other, db, 80)
        # The pods are dual-stack: the same policy decides on their IPv6 addresses.
        assert allowed(web, db, 80, ipv6=True)
        assert not allowed(web, db, 81, ipv6=True)
        assert not allowed(other, db, 80, ipv6=True)

        # Edit the policy file: port 81 opens, within the stated time, without restarting anything.
        (manifests / "policy.yaml").write_text(db_policy("[{port: 80}, {port: 81}]"))
        assert eventually(lambda: allowed(web, db, 81)) is not None

        # An invalid policy in another file is rejected with its reason; the valid one stays in force.
        (manifests / "broken.yaml").write_text(
            textwrap.dedent("""\
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: broken, namespace: shop}
            spec:
              podSelector: {}
              ingress: [{ports: [{endPort: 90}]}]
            """)
        )
        assert eventually(lambda: any("broken" in r for r in agent.status().rejected)) is not None
        rejected = next(r for r in agent.status().rejected if "broken" in r)
        assert "endPort" in rejected, rejected
        assert not allowed(other, db, 80), "the valid policy is still enforced"
        assert allowed(web, db, 80)

        # Flows carry pod names and the deciding policy, through the real gRPC API and CLI.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshagent.cli.main",
                "flows",
                "--server",
                f"unix://{tmp_path}/observer.sock",
                "--last",
                "200",
                "--print-policy-names",
                "-o",
                "compact",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert "shop/web" in result.stdout and "shop/db" in result.stdout
        assert "NetworkPolicy:shop/db-from-web" in result.stdout
        assert "DROPPED" in result.stdout
        # A default deny names the policy that isolates the pod.
        denied = [line for line in result.stdout.splitlines() if "shop/other" in line and "DROPPED" in line]
        assert denied and all(
            "ingress denied by NetworkPolicy:shop/db-from-web" in line for line in denied
        ), denied

        # `meshagent status` shows the observer's counters and the agent's endpoints and rejections.
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshagent.cli.main",
                "status",
                "--server",
                f"unix://{tmp_path}/observer.sock",
                "--health",
                f"127.0.0.1:{agent.health_port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        for pod in ("shop/web", "shop/db", "shop/other"):
            assert re.search(rf"{pod}\s+ready", status.stdout), status.stdout
        assert "NetworkPolicy shop/broken" in status.stdout
        assert re.search(r"Flow API:\s+front process pid \d+\n", status.stdout), status.stdout

        # Metrics: real exposition, parsed; the policy drops we caused are counted.
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        families = {f.name: f for f in text_string_to_metric_families(text)}
        drops = sum(s.value for s in families["meshagent_drop"].samples if s.name.endswith("_total"))
        assert drops >= 2
        # The rejection reached the metrics too, and the endpoints are counted by state.
        rejected = families["meshagent_objects_rejected_current"].samples
        assert [(s.labels["kind"], s.value) for s in rejected] == [("NetworkPolicy", 1.0)]
        ready_endpoints = [
            s.value for s in families["meshagent_endpoints"].samples if s.labels["state"] == "ready"
        ]
        assert ready_endpoints == [3.0]
        # The front process serving the flow API is up.
        assert [s.value for s in families["meshagent_observer_front_up"].samples] == [1.0]

        # Deleting the policy file lifts the isolation.
        (manifests / "policy.yaml").unlink()
        assert eventually(lambda: allowed(other, db, 5432)) is not None
    finally:
        agent.stop()


def test_kubernetes_api_drives_enforcement_and_reports_rejections(
    pods: tuple[Topology, Pod, Pod, Pod], tmp_path: Path
) -> None:
    topo, web, db, other = pods
    import yaml

    emulator = KubeEmulator()
    emulator.start()
    try:
        emulator.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        for pod, labels in ((web, {"app": "web"}), (db, {"app": "db"}), (other, {"app": "other"})):
            emulator.apply(yaml.safe_load(pod_manifest(pod.name, "shop", pod.ip, labels, ipv6=pod.ipv6)))
        emulator.apply(yaml.safe_load(db_policy("[{port: 80}]")))
        agent = start_agent(topo, tmp_path, api_server=emulator.url)
        try:
            assert allowed(web, db, 80)
            assert not allowed(other, db, 80)
            # Relabel "other" as web through the API: it is let in.
            emulator.apply(
                yaml.safe_load(pod_manifest("other", "shop", other.ip, {"app": "web"}, ipv6=other.ipv6))
            )
            assert eventually(lambda: allowed(other, db, 80)) is not None
            # An invalid policy is rejected, and a Kubernetes Event says why.
            bad = yaml.safe_load(db_policy("[{port: 80, endPort: 70}]"))
            bad["metadata"]["name"] = "bad"
            emulator.apply(bad)
            assert (
                eventually(
                    lambda: any(
                        e.get("involvedObject", {}).get("name") == "bad" for e in list(emulator.events)
                    )
                )
                is not None
            )
            assert allowed(other, db, 80) and not allowed(other, db, 81)
        finally:
            agent.stop()
    finally:
        emulator.stop()
