"""Restarts amid churn, with `meshagent run` as its own process and real packets: pods deleted or recreated
while the agent is down, the whole node namespace recreated, an interface the programs cannot be attached
to. The agent always becomes ready, enforces the desired state, says what it found stale or could not
attach, and `meshagent uninstall` always ends with nothing of ours left."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from meshagent.datapath import tc
from meshagent.testing.topology import Pod, Topology, derived_ipv6_of
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.test_agent_e2e import allowed, db_policy, eventually, pod_manifest, start_agent
from tests.agent.test_restart import AgentProcess
from tests.sources.k8s_emulator import KubeEmulator

pytestmark = pytest.mark.kernel

ADDRESSES = {"web": "10.244.9.10", "db": "10.244.9.20", "other": "10.244.9.30"}


def _ipv6(name: str) -> IPv6Address:
    """The IPv6 address the topology gives the pod by default (its manifest must list it too)."""
    return derived_ipv6_of(IPv4Address(ADDRESSES[name]))


def _add_pods(topo: Topology, names: tuple[str, ...]) -> dict[str, Pod]:
    pods = {name: topo.add_pod(name, ADDRESSES[name]) for name in names}
    if "db" in pods:
        pods["db"].serve(tcp=(80, 81))
    return pods


def _write_cluster(manifests: Path, names: tuple[str, ...]) -> None:
    (manifests / "cluster.yaml").write_text(
        "---\n".join(
            [
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
                *(
                    pod_manifest(name, "shop", ADDRESSES[name], {"app": name}, ipv6=_ipv6(name))
                    for name in names
                ),
            ]
        )
    )


def _status(agent: AgentProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.health_port}/status", timeout=3) as answer:
        status: dict[str, Any] = json.loads(answer.read())
    return status


def _uninstall(pin_dir: Path, netns: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "meshagent.cli.main",
            "uninstall",
            "--pin-dir",
            str(pin_dir),
            "--node-netns",
            netns,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    path = tmp_path / "manifests"
    path.mkdir()
    _write_cluster(path, ("web", "db", "other"))
    (path / "policy.yaml").write_text(db_policy("[{port: 80}]"))
    return path


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}"
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def test_restarts_amid_churn_adopt_what_exists(manifests: Path, pin_dir: Path, tmp_path: Path) -> None:
    with Topology() as topo:
        pods = _add_pods(topo, ("web", "db", "other"))
        agent = AgentProcess(topo, manifests, pin_dir, tmp_path, health_port=19881)
        try:
            agent.start()
            assert allowed(pods["web"], pods["db"], 80) and not allowed(pods["other"], pods["db"], 80)
            agent.kill(signal.SIGTERM)  # a clean stop leaves the kernel enforcing

            # The scenario: every pod's namespace deleted and recreated while the agent is down.
            for name in list(pods):
                topo.remove_pod(name)
            pods = _add_pods(topo, ("web", "db", "other"))
            agent.start()  # used to exit with AttachError (No such device)
            assert allowed(pods["web"], pods["db"], 80) and not allowed(pods["other"], pods["db"], 80)
            stale = _status(agent)["stale_endpoints"]
            assert len(stale) == 3 and all("gone" in line for line in stale), stale

            # A pod deleted while the agent is down (and from the desired state).
            agent.kill()
            topo.remove_pod("other")
            pods.pop("other")
            _write_cluster(manifests, ("web", "db"))
            agent.start()
            status = _status(agent)
            assert [line for line in status["stale_endpoints"] if ADDRESSES["other"] in line], status
            assert set(status["endpoints"]) == {"shop/web", "shop/db"}
            assert allowed(pods["web"], pods["db"], 80) and not allowed(pods["web"], pods["db"], 81)

            # The whole node namespace recreated, with the same names and addresses.
            agent.kill()
            topo.close()
            topo.create()
            pods = _add_pods(topo, ("web", "db", "other"))
            _write_cluster(manifests, ("web", "db", "other"))
            assert allowed(pods["other"], pods["db"], 80), "the new node starts with nothing enforcing"
            agent.start()
            assert len(_status(agent)["stale_endpoints"]) == 2
            assert allowed(pods["web"], pods["db"], 80) and not allowed(pods["other"], pods["db"], 80)
        finally:
            if agent.process is not None and agent.process.poll() is None:
                agent.process.kill()
                agent.process.wait(timeout=30)

        first = _uninstall(pin_dir, topo.node)
        assert first.returncode == 0, first.stderr
        assert "removed our tc filters from" in first.stdout
        assert allowed(pods["other"], pods["db"], 80), "uninstalled: nothing enforces any more"
        second = _uninstall(pin_dir, topo.node)
        assert second.returncode == 0, second.stderr
        assert "nothing of meshagent found" in second.stdout


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_an_endpoint_that_cannot_be_attached_never_stops_the_others(
    manifests: Path, pin_dir: Path, tmp_path: Path
) -> None:
    with Topology() as topo:
        pods = _add_pods(topo, ("web", "db", "other"))
        # Another tool's plain ingress qdisc on one pod's interface: our programs cannot go there.
        broken = pods["other"]
        subprocess.run(
            ["ip", "netns", "exec", topo.node, "tc", "qdisc", "add", "dev", broken.host_ifname, "ingress"],
            check=True,
        )
        agent = AgentProcess(topo, manifests, pin_dir, tmp_path, health_port=19882)
        metrics_port = 19883
        agent.command[agent.command.index("--metrics-listen") + 1] = f"127.0.0.1:{metrics_port}"
        try:
            agent.start()
            assert allowed(pods["web"], pods["db"], 80) and not allowed(pods["other"], pods["db"], 80)
            state = _status(agent)["endpoints"]["shop/other"]
            assert state.startswith("attach failed") and "ingress" in state, state
            assert _status(agent)["endpoints"]["shop/db"].startswith("ready")
            samples = _metrics(metrics_port)
            assert samples[("meshagent_endpoint_attach_failures_total", ())] >= 1
            assert samples[("meshagent_endpoints", (("state", "attach_failed"),))] == 1

            # The other tool goes away: the retry attaches, with no restart.
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    topo.node,
                    "tc",
                    "qdisc",
                    "del",
                    "dev",
                    broken.host_ifname,
                    "ingress",
                ],
                check=True,
            )
            assert eventually(
                lambda: _status(agent)["endpoints"]["shop/other"].startswith("ready"), timeout=40
            )
            assert len(tc.attached(ifindex=broken.ifindex, netns=topo.node)) == 2
            assert _metrics(metrics_port)[("meshagent_endpoints", (("state", "attach_failed"),))] == 0
        finally:
            if agent.process is not None and agent.process.poll() is None:
                agent.kill(signal.SIGTERM)
            assert _uninstall(pin_dir, topo.node).returncode == 0


def test_attach_failure_is_a_kubernetes_event_on_the_pod(tmp_path: Path) -> None:
    import yaml

    with Topology() as topo, KubeEmulator() as emulator:
        pods = _add_pods(topo, ("web", "db", "other"))
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                topo.node,
                "tc",
                "qdisc",
                "add",
                "dev",
                pods["other"].host_ifname,
                "ingress",
            ],
            check=True,
        )
        emulator.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        for name in ("web", "db", "other"):
            emulator.apply(
                yaml.safe_load(pod_manifest(name, "shop", ADDRESSES[name], {"app": name}, ipv6=_ipv6(name)))
            )
        emulator.apply(yaml.safe_load(db_policy("[{port: 80}]")))
        agent = start_agent(topo, tmp_path, api_server=emulator.url)
        try:
            assert allowed(pods["web"], pods["db"], 80) and not allowed(pods["other"], pods["db"], 80)

            def attach_event() -> list[dict[str, Any]]:
                return [e for e in list(emulator.events) if e.get("reason") == "EndpointAttachFailed"]

            assert eventually(lambda: bool(attach_event())) is not None, emulator.events
            event = attach_event()[0]
            assert event["involvedObject"]["kind"] == "Pod" and event["involvedObject"]["name"] == "other"
            assert "ingress" in event["message"]
        finally:
            agent.stop()
