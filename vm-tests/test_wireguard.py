"""On every kernel of the matrix: WireGuard between nodes, with real agents, real devices and real packets.

    node-1 (agent, key): a1 (serves 80), later a2
    node-2 (agent, key): b1 (serves 80)
    node-3 (no agent, no key): c1 (serves 80), a node that has not joined encryption yet

a1, b1 and c1 are dual-stack: their IPv6 traffic between nodes is held to the same claims as their IPv4
traffic (carried inside the IPv4 underlay's WireGuard when encrypted, over the IPv6 underlay when not).

The underlay is captured with an AF_PACKET socket in its own namespace: the wire between nodes. Each
claim that something is encrypted is checked against the same capture seeing plaintext when encryption
is off, so the probe can fail. Standalone source: each node's public key goes into its Node manifest, as
an operator would put it there (`meshagent encryption public-key`).

One cluster and one pair of agents for the module (each agent start compiles its programs under TCG).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshagent.observer.client import ObserverClient
from meshagent.observer.proto.flow import flow_pb2
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.testing.agents import NodeAgent, meshagent_command
from meshagent.testing.cluster import ClusterNode, ClusterTopology
from meshagent.testing.topology import Pod
from meshagent.wireguard.peers import PUBLIC_KEY_ANNOTATION
from prometheus_client.parser import text_string_to_metric_families
from underlay import Capture, capture

from tests.agent.test_agent_e2e import pod_manifest
from tests.waiting import seconds_until

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1200)]

NAMESPACE = "default"
PLACEMENT = {"a1": (0, "10.244.1.10"), "b1": (1, "10.244.2.10"), "c1": (2, "10.244.3.10")}
IPV6_HOST = 0x10  # a pod's IPv6 address: this host number in its node's IPv6 pod CIDR
ADDED_POD = ("a2", 0, "10.244.1.20")
PORT = 51871
DEVICE = "mawg0"
AGENT_START_TIMEOUT = 600.0
EFFECT_TIMEOUT = 60.0
STREAMPROBE = str(Path(__file__).with_name("streamprobe.py"))


@dataclass
class Cluster:
    topology: ClusterTopology
    agents: list[NodeAgent]  # node-1 and node-2; node-3 has none
    state_dirs: list[Path]
    pods: dict[str, Pod]
    manifests: Path
    keys: dict[str, str]  # node name -> public key in its manifest
    workdir: Path

    def node(self, index: int) -> ClusterNode:
        return self.topology.nodes[index]

    def status(self, index: int) -> dict[str, Any]:
        port = self.agents[index].health_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as answer:
            encryption: dict[str, Any] = json.loads(answer.read())["encryption"]
        return encryption

    def write_nodes(self) -> None:
        documents = []
        for node in self.topology.nodes:
            obj = yaml.safe_load(node.node_manifest())
            if node.name in self.keys:
                obj["metadata"]["annotations"] = {PUBLIC_KEY_ANNOTATION: self.keys[node.name]}
            documents.append(json.dumps(obj))
        (self.manifests / "nodes.yaml").write_text("".join(f"---\n{d}\n" for d in documents))

    def write_pods(self) -> None:
        texts = [
            pod_manifest(name, NAMESPACE, pod.ip, {"app": name}, node=self.pod_node(name).name, ipv6=pod.ipv6)
            for name, pod in self.pods.items()
        ]
        (self.manifests / "pods.yaml").write_text("---\n".join(texts))

    def pod_node(self, name: str) -> ClusterNode:
        for node in self.topology.nodes:
            if name in node.pods:
                return node
        raise KeyError(name)

    def set_mode(self, index: int, mode: str) -> None:
        subprocess.run(
            meshagent_command("encryption", "mode", mode, "--state-dir", str(self.state_dirs[index])),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def peers_up(self) -> bool:
        """Both agents in a mode with peers, each with a handshake with the other."""
        for index in (0, 1):
            status = self.status(index)
            if status.get("mode") == "off" or not status.get("peers"):
                return False
            if not all(peer["last_handshake"] > 0 for peer in status["peers"]):
                return False
        return True

    def exchange(self, client: str, server: str, marker: bytes, *, family: int = 4) -> bool:
        """One TCP echo of `marker` from `client` to `server`:80, over IPv4 or IPv6."""
        target = address_of(self.pods[server], family)
        result = self.pods[client].run(
            sys.executable, STREAMPROBE, "once", str(target), "80", marker.decode(), timeout=60
        )
        return result.returncode == 0

    def stream(self, client: str, server: str) -> tuple[subprocess.Popen[str], Path]:
        stop = self.workdir / f"stop-{uuid.uuid4().hex[:6]}"
        process = self.pods[client].popen(
            sys.executable,
            STREAMPROBE,
            str(self.pods[server].ip),
            "80",
            str(stop),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "connected", (
            process.stderr.read() if process.stderr else ""
        )
        return process, stop


def address_of(pod: Pod, family: int) -> IPv4Address | IPv6Address:
    if family == 6:
        assert pod.ipv6 is not None, f"{pod.name} has no IPv6 address"
        return pod.ipv6
    return pod.ip


def end_stream(process: subprocess.Popen[str], stop: Path) -> dict[str, Any]:
    stop.touch()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def public_key(state_dir: Path) -> str:
    out = subprocess.run(
        meshagent_command("encryption", "public-key", "--state-dir", str(state_dir)),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return out.strip()


def device_index(node: ClusterNode) -> int | None:
    result = subprocess.run(
        ["ip", "-n", node.netns, "-j", "link", "show", DEVICE], capture_output=True, text=True
    )
    return int(json.loads(result.stdout)[0]["ifindex"]) if result.returncode == 0 else None


def routed_through_device(node: ClusterNode, address: IPv4Address) -> bool:
    result = subprocess.run(
        ["ip", "-n", node.netns, "-j", "route", "get", str(address)], capture_output=True, text=True
    )
    return result.returncode == 0 and json.loads(result.stdout)[0].get("dev") == DEVICE


def plaintext_seen(seen: Capture, pods: list[Pod], marker: bytes) -> list[str]:
    """What of the pods' traffic (both families) an observer of the underlay could read."""
    on_wire = seen.addresses()
    leaks = [
        f"pod address {address}"
        for pod in pods
        for address in (pod.ip, pod.ipv6)
        if address is not None and address in on_wire
    ]
    if seen.contains(marker):
        leaks.append("the payload")
    return leaks


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("wireguard")
    manifests = workdir / "manifests"
    manifests.mkdir()
    with ClusterTopology(3) as topology:
        pods = {
            name: topology.nodes[node].add_pod(
                name, ip, ipv6=topology.nodes[node].pod_cidr6.network_address + IPV6_HOST
            )
            for name, (node, ip) in PLACEMENT.items()
        }
        for pod in pods.values():
            pod.serve(tcp=(80,))
        state_dirs = [workdir / f"state-{i}" for i in (1, 2)]
        keys = {topology.nodes[i].name: public_key(state_dirs[i]) for i in (0, 1)}
        agents = [
            NodeAgent(
                topology.nodes[i],
                workdir,
                manifests=manifests,
                extra_args=(
                    "--encryption",
                    "permissive",
                    "--state-dir",
                    str(state_dirs[i]),
                    "--event-buffer-mib",
                    "1",
                    "--no-observer-front-process",
                ),
            )
            for i in (0, 1)
        ]
        built = Cluster(topology, agents, state_dirs, pods, manifests, keys, workdir)
        built.write_nodes()
        built.write_pods()
        try:
            for agent in agents:
                agent.start(timeout=AGENT_START_TIMEOUT)
            yield built
        finally:
            for agent in agents:
                agent.close()


@pytest.fixture
def encrypted(cluster: Cluster) -> Cluster:
    """The module's cluster with both agents running in permissive mode and their peers handshaken."""
    for index, agent in enumerate(cluster.agents):
        cluster.set_mode(index, "permissive")
        if not agent.running():
            agent.start(timeout=AGENT_START_TIMEOUT)

    # A handshake happens with the first packet: send some until both sides have one.
    def up() -> bool:
        cluster.exchange("a1", "b1", b"hello")
        return cluster.peers_up()

    assert seconds_until(up, EFFECT_TIMEOUT, interval=0.5) is not None, (cluster.status(0), cluster.status(1))
    return cluster


def test_cross_node_traffic_carries_no_plaintext_on_the_underlay(encrypted: Cluster) -> None:
    marker = f"SECRET-{uuid.uuid4().hex}".encode()
    a1, b1 = encrypted.pods["a1"], encrypted.pods["b1"]
    with capture(encrypted.topology.underlay) as seen:
        assert encrypted.exchange("a1", "b1", marker)
        assert encrypted.exchange("b1", "a1", marker)
    assert plaintext_seen(seen, [a1, b1], marker) == []
    assert seen.udp_to_port(PORT) >= 4, "the exchanges crossed the underlay as WireGuard"
    # The status shows each peer by node, with a handshake and bytes both ways.
    peer = encrypted.status(0)["peers"][0]
    assert peer["node"] == "node-2" and peer["endpoint"] == f"{encrypted.node(1).address}:{PORT}"
    assert peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0


def test_cross_node_ipv6_traffic_carries_no_plaintext_on_the_underlay(encrypted: Cluster) -> None:
    marker = f"SECRET-{uuid.uuid4().hex}".encode()
    a1, b1 = encrypted.pods["a1"], encrypted.pods["b1"]
    assert a1.ipv6 is not None and b1.ipv6 is not None
    secure_in = dict(peer_node="node-1", direction="ingress", encrypted="true")
    before = metric(scrape(encrypted.agents[1]), "meshagent_encryption_flows_total", **secure_in)
    with capture(encrypted.topology.underlay) as seen:
        assert encrypted.exchange("a1", "b1", marker, family=6)
        assert encrypted.exchange("b1", "a1", marker, family=6)
    assert plaintext_seen(seen, [a1, b1], marker) == []
    assert seen.udp_to_port(PORT) >= 4, "the IPv6 exchanges crossed inside the IPv4 underlay's WireGuard"
    # Counted per node in the same counters as IPv4, and flows with IPv6 addresses flagged encrypted.
    after = metric(scrape(encrypted.agents[1]), "meshagent_encryption_flows_total", **secure_in)
    assert after >= before + 1, (before, after)
    found = [f for f in flows(encrypted.agents[1]) if f.IP.destination == str(b1.ipv6)]
    assert found and all(f.IP.encrypted for f in found), found


def test_the_capture_sees_plaintext_when_encryption_is_off(encrypted: Cluster) -> None:
    marker = f"SECRET-{uuid.uuid4().hex}".encode()
    for index in (0, 1):
        encrypted.set_mode(index, "off")
    assert (
        seconds_until(
            lambda: (
                all(encrypted.status(i)["mode"] == "off" for i in (0, 1))
                and device_index(encrypted.node(0)) is None
            ),
            EFFECT_TIMEOUT,
            interval=0.2,
        )
        is not None
    )
    a1, b1 = encrypted.pods["a1"], encrypted.pods["b1"]
    with capture(encrypted.topology.underlay) as seen:
        assert encrypted.exchange("a1", "b1", marker)
    assert plaintext_seen(seen, [a1, b1], marker) == [
        f"pod address {a1.ip}",
        f"pod address {b1.ip}",
        "the payload",
    ]
    # The same capture reads IPv6 pod traffic in the clear: the IPv6 claims above can fail.
    with capture(encrypted.topology.underlay) as seen6:
        assert encrypted.exchange("a1", "b1", marker, family=6)
    assert plaintext_seen(seen6, [a1, b1], marker) == [
        f"pod address {a1.ipv6}",
        f"pod address {b1.ipv6}",
        "the payload",
    ]


def test_permissive_accepts_plaintext_from_a_node_without_a_key(encrypted: Cluster) -> None:
    marker = f"SECRET-{uuid.uuid4().hex}".encode()
    assert encrypted.status(1)["plaintext_nodes"] == ["node-3"]
    with capture(encrypted.topology.underlay) as seen:
        assert encrypted.exchange("c1", "b1", marker), "node-3 has no key: permissive lets it in"
        assert encrypted.exchange("c1", "b1", marker, family=6), "and over IPv6 likewise"
    assert seen.contains(marker), "sent in the clear, as node-3 cannot encrypt"
    assert encrypted.pods["c1"].ipv6 in seen.addresses()


def flows(agent: NodeAgent, *filters: flow_pb2.FlowFilter) -> list[flow_pb2.Flow]:
    with ObserverClient(agent.server) as client:
        request = opb.GetFlowsRequest(number=5000, whitelist=list(filters))
        return [r.flow for r in client.get_flows(request) if r.HasField("flow")]


def scrape(agent: NodeAgent) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_strict_drops_plaintext_from_and_to_a_node_without_a_key(encrypted: Cluster) -> None:
    second = encrypted.agents[1]
    encrypted.set_mode(1, "strict")
    assert (
        seconds_until(lambda: encrypted.status(1)["mode"] == "strict", EFFECT_TIMEOUT, interval=0.2)
        is not None
    )
    assert not encrypted.exchange("c1", "b1", b"plain-in"), "strict: plaintext from node-3 is dropped"
    assert not encrypted.exchange("b1", "c1", b"plain-out"), "strict: nothing leaves for node-3 in plaintext"
    assert encrypted.exchange("a1", "b1", b"encrypted"), "node-1 encrypts: strict lets it in"
    # IPv6 is held to the same: a dual-stack pod is not reachable in plaintext by its other address.
    assert not encrypted.exchange("c1", "b1", b"plain-in6", family=6), "strict: IPv6 from node-3 is dropped"
    assert not encrypted.exchange("b1", "c1", b"plain-out6", family=6), "strict: no IPv6 leaves for node-3"
    assert encrypted.exchange("a1", "b1", b"encrypted6", family=6), "node-1 encrypts IPv6: strict lets it in"
    # The drop has a reason of its own, in flows (Hubble's UNENCRYPTED_TRAFFIC) and in metrics.
    b1, c1 = str(encrypted.pods["b1"].ip), str(encrypted.pods["c1"].ip)
    drops = flows(second, flow_pb2.FlowFilter(drop_reason_desc=[flow_pb2.UNENCRYPTED_TRAFFIC]))
    directions = {(f.IP.source, f.IP.destination, f.traffic_direction) for f in drops}
    assert (c1, b1, flow_pb2.INGRESS) in directions
    assert (b1, c1, flow_pb2.EGRESS) in directions
    b1_6, c1_6 = str(encrypted.pods["b1"].ipv6), str(encrypted.pods["c1"].ipv6)
    assert (c1_6, b1_6, flow_pb2.INGRESS) in directions
    assert (b1_6, c1_6, flow_pb2.EGRESS) in directions
    assert all(f.verdict == flow_pb2.DROPPED and not f.IP.encrypted for f in drops)
    samples = scrape(second)
    assert metric(samples, "meshagent_drop_total", reason="UNENCRYPTED_TRAFFIC", protocol="tcp") > 0
    # The numbers to decide by: per remote node, encrypted and plaintext traffic.
    plain = dict(peer_node="node-3", direction="ingress", encrypted="false")
    assert metric(samples, "meshagent_encryption_packets_total", **plain) > 0
    assert metric(samples, "meshagent_encryption_bytes_total", **plain) > 0
    secure = dict(peer_node="node-1", direction="ingress", encrypted="true")
    assert metric(samples, "meshagent_encryption_flows_total", **secure) > 0
    assert metric(samples, "meshagent_encryption_bytes_total", **secure) > 0
    assert metric(samples, "meshagent_encryption_mode", mode="strict") == 1.0
    # The encrypted filter: only what crossed through the device, and the node-1 traffic is among it.
    only_encrypted = flows(second, flow_pb2.FlowFilter(encrypted=[True]))
    assert only_encrypted and all(f.IP.encrypted for f in only_encrypted)
    assert any(f.IP.source == str(encrypted.pods["a1"].ip) for f in only_encrypted)
    assert any(f.IP.source == str(encrypted.pods["a1"].ipv6) for f in only_encrypted)
    assert all(not f.IP.encrypted for f in flows(second, flow_pb2.FlowFilter(encrypted=[False])))
    # Back to permissive at run time: node-3's plaintext is accepted again.
    encrypted.set_mode(1, "permissive")
    assert (
        seconds_until(lambda: encrypted.exchange("c1", "b1", b"plain-again"), EFFECT_TIMEOUT, interval=0.5)
        is not None
    )


def test_a_pod_added_on_one_node_is_reached_encrypted_from_the_others(
    encrypted: Cluster, record_property: Callable[[str, object], None]
) -> None:
    name, node_index, ip = ADDED_POD
    pod = encrypted.node(node_index).add_pod(name, ip)
    pod.serve(tcp=(80,))
    encrypted.pods[name] = pod
    encrypted.write_pods()
    written = time.monotonic()
    # Both directions need the pod: node-2 routes to it through the device, and node-2's peer for node-1
    # accepts it as a source (WireGuard drops packets from addresses outside a peer's allowed IPs).
    took = seconds_until(
        lambda: routed_through_device(encrypted.node(1), pod.ip), EFFECT_TIMEOUT, interval=0.05
    )
    assert took is not None
    # Figures go to the JUnit report of the run (the guest's results directory), not into assertions.
    record_property("pod_added_routed_on_other_node_seconds", round(took, 3))
    marker = f"SECRET-{uuid.uuid4().hex}".encode()
    assert (
        seconds_until(lambda: encrypted.exchange("b1", name, b"x"), EFFECT_TIMEOUT, interval=0.2) is not None
    )
    record_property("pod_added_reachable_from_other_node_seconds", round(time.monotonic() - written, 3))
    with capture(encrypted.topology.underlay) as seen:
        assert encrypted.exchange("b1", name, marker)
    assert plaintext_seen(seen, [pod, encrypted.pods["b1"]], marker) == []


def test_an_agent_restart_keeps_the_device_and_peers_without_a_gap(
    encrypted: Cluster, record_property: Callable[[str, object], None]
) -> None:
    node = encrypted.node(1)
    before_index, before = device_index(node), encrypted.status(1)["peers"]
    process, stop = encrypted.stream("a1", "b1")
    encrypted.agents[1].kill()
    time.sleep(2)
    assert device_index(node) == before_index, "the device outlives its agent"
    took = encrypted.agents[1].start(timeout=AGENT_START_TIMEOUT)
    time.sleep(2)
    result = end_stream(process, stop)
    assert result["failed"] == 0 and result["ok"] > 0, result
    record_property("restart_agent_start_seconds", round(took, 1))
    record_property("restart_stream_longest_gap_ms", result["max_gap_ms"])
    assert device_index(node) == before_index, "the restarted agent adopted the device, not a new one"
    # The status reads the device: the peers the killed agent left are there, unchanged.
    after = encrypted.status(1)["peers"]
    assert [(p["public_key"], p["allowed_ips"]) for p in after] == [
        (p["public_key"], p["allowed_ips"]) for p in before
    ]


def test_key_rotation_on_request(encrypted: Cluster, record_property: Callable[[str, object], None]) -> None:
    old_key = encrypted.keys["node-1"]
    process, stop = encrypted.stream("a1", "b1")
    requested = time.monotonic()
    subprocess.run(
        meshagent_command("encryption", "rotate", "--state-dir", str(encrypted.state_dirs[0])),
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (
        seconds_until(lambda: encrypted.status(0)["public_key"] != old_key, EFFECT_TIMEOUT, interval=0.1)
        is not None
    )
    new_key = encrypted.status(0)["public_key"]
    assert encrypted.status(0)["rotations"] == 1
    assert public_key(encrypted.state_dirs[0]) == new_key, "the new key is the one kept for restarts"
    # Standalone: the operator publishes the new key in the Node manifest (the API source does it itself).
    encrypted.keys["node-1"] = new_key
    encrypted.write_nodes()
    assert (
        seconds_until(
            lambda: any(
                p["public_key"] == new_key and p["last_handshake"] > 0 for p in encrypted.status(1)["peers"]
            ),
            EFFECT_TIMEOUT,
            interval=0.1,
        )
        is not None
    )
    handshaken = time.monotonic() - requested
    time.sleep(1)
    result = end_stream(process, stop)
    assert result["failed"] == 0 and result["ok"] > 0, result
    assert [p["public_key"] for p in encrypted.status(1)["peers"]] == [new_key], "the old key's peer is gone"
    record_property("rotation_new_handshake_after_request_seconds", round(handshaken, 2))
    record_property("rotation_stream_longest_gap_ms", result["max_gap_ms"])
    marker = f"SECRET-{uuid.uuid4().hex}".encode()
    with capture(encrypted.topology.underlay) as seen:
        assert encrypted.exchange("a1", "b1", marker)
    assert plaintext_seen(seen, [encrypted.pods["a1"], encrypted.pods["b1"]], marker) == []
