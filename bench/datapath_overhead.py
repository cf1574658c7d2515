"""What the whole agent costs the traffic of two pods on one node: no agent (nothing attached to their
interfaces) against `meshagent run` with default settings (flows on) on manifests whose policies isolate
both pods and allow exactly the benchmark's traffic, and against the same agent with a flow follower
(`meshagent flows --follow` reading every flow). Rounds alternate the set-ups in one run (forward, then
backward), so a noisy machine affects each alike; each figure is the median of the per-round ratios to no
agent, with their lowest and highest.

Figures: TCP throughput (iperf3), request/response rate (1-byte ping-pong on one connection), connection
rate (connect, 1-byte exchange, close). Goals: throughput >= 0.98 of no agent, request/response >= 0.95,
connection rate >= 0.90, connection rate with a follower >= 0.85; program cost on established traffic
<= 200 ns per packet (the kernel's run-time statistics, in a last session of its own, since turning them
on costs every packet a little).

The pods are dual-stack; `--family ipv6` runs the same workloads between their IPv6 addresses (the IPv6
programs, entered by tail call, with their own maps), and its lines carry an `_ipv6` suffix.

Drops: any drop of the benchmark's own (TCP) traffic fails the run. Other drops are printed with the flow
that describes them and do not: a pod's kernel sends packets of its own when its interface comes up
(IPv6 multicast listener reports, for one), which are no part of what is measured.

    .venv/bin/python bench/datapath_overhead.py [--quick] [--rounds N] [--seconds S] [--family ipv6]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from meshagent.model.kernel_state import (
    Action,
    Direction,
    EndpointEntry,
    IPCacheEntry,
    KernelState,
    PolicyEntry,
    Protocol,
)
from meshagent.testing.agents import NodeAgent, meshagent_command
from meshagent.testing.benchtools import (
    ProgramStats,
    bench_line,
    build_tcpbench,
    median,
    rss_mib,
    spread,
)
from meshagent.testing.cluster import ClusterNode, ClusterTopology
from meshagent.testing.topology import Pod
from prometheus_client.parser import text_string_to_metric_families

IPERF_PORT = 5201
ECHO_PORT = 7000
CLIENT_ID, SERVER_ID = 1001, 1002
NAMESPACE = "bench"
SETUPS = ("no_agent", "agent", "agent_follower")
WORKLOADS = (
    ("throughput", "datapath_tcp_throughput", "gbps"),
    ("rr", "datapath_request_response", "per_s"),
    ("crr", "datapath_connection_rate", "per_s"),
)


def policy_state(client: Pod, server: Pod) -> KernelState:
    """Both pods isolated both ways, with rules allowing exactly the benchmark's traffic (the kernel state
    that bench/datapath_overhead_cross_node.py writes itself)."""
    # Dual-stack pods: each endpoint declares both addresses (an undeclared IPv6 source is spoofed) and
    # both are in the ipcache, so either family's traffic is judged by the same rules.
    endpoints = frozenset(
        EndpointEntry(
            pod.ifindex,
            endpoint_id,
            identity,
            pod.ip,
            ipv6=pod.ipv6,
            enforce_ingress=True,
            enforce_egress=True,
        )
        for pod, endpoint_id, identity in ((client, 1, CLIENT_ID), (server, 2, SERVER_ID))
    )
    ipcache = frozenset(
        IPCacheEntry(cidr=cidr, identity=identity)
        for pod, identity in ((client, CLIENT_ID), (server, SERVER_ID))
        for cidr in (
            IPv4Network(f"{pod.ip}/32"),
            *([IPv6Network(f"{pod.ipv6}/128")] if pod.ipv6 is not None else []),
        )
    )
    policy = frozenset(
        PolicyEntry(
            endpoint_id=endpoint_id,
            direction=direction,
            peer_identity=peer,
            protocol=Protocol.TCP,
            port_lo=port,
            port_hi=port,
            action=Action.ALLOW,
            rule_id=100 + port % 100,
        )
        for port in (IPERF_PORT, ECHO_PORT)
        for endpoint_id, direction, peer in (
            (1, Direction.EGRESS, SERVER_ID),
            (2, Direction.INGRESS, CLIENT_ID),
        )
    )
    return KernelState(endpoints=endpoints, ipcache=ipcache, policy=policy)


def write_manifests(directory: Path, node: ClusterNode, client: Pod, server: Pod) -> None:
    """The cluster as the agent reads it: both pods isolated both ways (default deny), the client allowed
    to the server's two ports and the server to be reached there."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node.yaml").write_text(node.node_manifest())
    ports = f"[{{port: {IPERF_PORT}}}, {{port: {ECHO_PORT}}}]"
    (directory / "objects.yaml").write_text(
        textwrap.dedent(f"""\
            apiVersion: v1
            kind: Namespace
            metadata: {{name: {NAMESPACE}}}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {{name: client, namespace: {NAMESPACE}, labels: {{app: client}}}}
            spec: {{nodeName: {node.name}, containers: [{{name: main, image: bench}}]}}
            status: {{podIP: "{client.ip}", podIPs: [{{ip: "{client.ip}"}}, {{ip: "{client.ipv6}"}}]}}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {{name: server, namespace: {NAMESPACE}, labels: {{app: server}}}}
            spec:
              nodeName: {node.name}
              containers: [{{name: main, image: bench,
                             ports: [{{containerPort: {IPERF_PORT}}}, {{containerPort: {ECHO_PORT}}}]}}]
            status: {{podIP: "{server.ip}", podIPs: [{{ip: "{server.ip}"}}, {{ip: "{server.ipv6}"}}]}}
            ---
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {{name: default-deny, namespace: {NAMESPACE}}}
            spec: {{podSelector: {{}}, policyTypes: [Ingress, Egress]}}
            ---
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {{name: client-to-server, namespace: {NAMESPACE}}}
            spec:
              podSelector: {{matchLabels: {{app: client}}}}
              policyTypes: [Egress]
              egress: [{{to: [{{podSelector: {{matchLabels: {{app: server}}}}}}], ports: {ports}}}]
            ---
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {{name: server-from-client, namespace: {NAMESPACE}}}
            spec:
              podSelector: {{matchLabels: {{app: server}}}}
              policyTypes: [Ingress]
              ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}], ports: {ports}}}]
            """)
    )


def target(server: Pod, family: str) -> str:
    return str(server.ipv6 if family == "ipv6" else server.ip)


def throughput_gbps(client: Pod, server: Pod, seconds: float, family: str) -> float:
    result = client.run(
        "iperf3", "-c", target(server, family), "-t", str(seconds), "-J", timeout=seconds + 30
    )
    data = json.loads(result.stdout)
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def tool_rate(
    client: Pod, tool: Path, mode: str, server: Pod, seconds: float, family: str, *extra: str
) -> float:
    result = client.run(
        str(tool),
        mode,
        target(server, family),
        str(ECHO_PORT),
        str(seconds),
        *extra,
        timeout=seconds + 30,
        check=True,
    )
    return float(result.stdout.strip())


class Follower:
    """`meshagent flows --follow` on the agent's flow API, every flow read and counted."""

    def __init__(self, server: str) -> None:
        self.flows = 0
        self._process = subprocess.Popen(
            meshagent_command("flows", "--server", server, "--follow", "-o", "json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for _line in self._process.stdout:
            self.flows += 1

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)
        self._reader.join(timeout=10)


@dataclass
class AgentReadings:
    """What the agent sessions left to report: drops by (reason, protocol), the drop flows themselves,
    the agent's resident size after each session, the flows the follower read, start-to-ready times."""

    drops: dict[tuple[str, str], float] = field(default_factory=dict)
    drop_flows: list[str] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    followed_flows: int = 0
    ready_s: list[float] = field(default_factory=list)

    def take(self, agent: NodeAgent) -> None:
        """Reads a running agent before it stops (its flows and counters go with it)."""
        assert agent.process is not None
        self.rss_mib.append(rss_mib(agent.process.pid))
        url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "meshagent_drop":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = (sample.labels["reason"], sample.labels["protocol"])
                        self.drops[key] = self.drops.get(key, 0) + sample.value
        dropped = subprocess.run(
            meshagent_command("flows", "--server", agent.server, "--all", "--verdict", "DROPPED"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.drop_flows.extend(line for line in dropped.stdout.splitlines() if line.strip())

    def own_traffic_dropped(self) -> bool:
        return any(protocol == "TCP" for _reason, protocol in self.drops)


def program_ids(node: ClusterNode, pods: list[Pod]) -> dict[str, set[int]]:
    """The programs attached to the pods' host-side interfaces, as tc lists them, by hook: ingress of the
    host side is traffic leaving the pod (from_endpoint), egress entering it (to_endpoint)."""
    found: dict[str, set[int]] = {"from_endpoint": set(), "to_endpoint": set()}
    for pod in pods:
        for hook, name in (("ingress", "from_endpoint"), ("egress", "to_endpoint")):
            listing = subprocess.run(
                ["tc", "-n", node.netns, "filter", "show", "dev", pod.host_ifname, hook],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            found[name].update(int(number) for number in re.findall(r"\bid (\d+)", listing))
    return found


def program_cost(
    node: ClusterNode, pods: list[Pod], workloads: dict[str, Callable[[], float]]
) -> dict[str, dict[str, float]]:
    """Nanoseconds per run of each program, per workload, from the kernel's run-time statistics."""
    ids = program_ids(node, pods)
    if not all(ids.values()):
        raise RuntimeError(f"the agent's programs are not attached to the pods' interfaces: {ids}")
    stats = ProgramStats()
    cost: dict[str, dict[str, float]] = {}
    try:
        for workload, measure in workloads.items():
            before = {name: [stats.sample(pid) for pid in pids] for name, pids in ids.items()}
            measure()
            for name, pids in ids.items():
                after = [stats.sample(pid) for pid in pids]
                spent = sum(a[0] - b[0] for a, b in zip(after, before[name], strict=True))
                runs = sum(a[1] - b[1] for a, b in zip(after, before[name], strict=True))
                cost.setdefault(workload, {})[f"{name}_ns_per_packet"] = spent / runs if runs else 0.0
    finally:
        stats.close()
    return cost


def ratio_figures(results: dict[str, dict[str, list[float]]], setup: str, workload: str) -> dict[str, float]:
    """Per-round ratios of a set-up to no agent (same round), as median, lowest and highest."""
    ratios = [
        with_agent / without
        for with_agent, without in zip(results[setup][workload], results["no_agent"][workload], strict=True)
        if without
    ]
    low, high = spread(ratios)
    return {"ratio_median": median(ratios), "ratio_min": low, "ratio_max": high}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two 1-second rounds: a smoke run, no ratios")
    parser.add_argument("--rounds", type=int, help="rounds of every set-up (default 7, quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per workload (default 3, quick 1)")
    parser.add_argument("--family", choices=("ipv4", "ipv6"), default="ipv4", help="address family measured")
    args = parser.parse_args(argv)
    family = args.family
    suffix = "_ipv6" if family == "ipv6" else ""
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    rounds = args.rounds or (2 if args.quick else 7)

    tool = build_tcpbench()
    readings = AgentReadings()
    results: dict[str, dict[str, list[float]]] = {s: {w: [] for w, _, _ in WORKLOADS} for s in SETUPS}
    with ClusterTopology(1) as cluster, tempfile.TemporaryDirectory() as tmp:
        node = cluster.nodes[0]
        # Dual-stack pods (the topology's default): --family picks the address the workloads connect to.
        client = node.add_pod("client")
        server = node.add_pod("server")
        # Many short connections: let the client reuse ports still in TIME_WAIT.
        client.run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        write_manifests(Path(tmp) / "manifests", node, client, server)
        iperf = server.popen(
            "iperf3", "-s", "-p", str(IPERF_PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        echo = server.popen(str(tool), "server", str(ECHO_PORT), stdout=subprocess.PIPE)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        workloads: dict[str, Callable[[], float]] = {
            "throughput": lambda: throughput_gbps(client, server, seconds, family),
            "rr": lambda: tool_rate(client, tool, "rr", server, seconds, family),
            "crr": lambda: tool_rate(client, tool, "crr", server, seconds, family, "4"),
        }
        agent = NodeAgent(node, Path(tmp), manifests=Path(tmp) / "manifests", log_level="warning")
        try:
            for round_index in range(rounds):
                order = SETUPS if round_index % 2 == 0 else tuple(reversed(SETUPS))
                for setup in order:
                    if setup == "no_agent" and agent.running():
                        readings.take(agent)
                        agent.stop()  # with --cleanup: no filter stays on the pods' interfaces
                    elif setup != "no_agent" and not agent.running():
                        readings.ready_s.append(agent.start())
                    if setup == "no_agent" and any(program_ids(node, [client, server]).values()):
                        raise RuntimeError("programs stayed on the pods' interfaces without the agent")
                    follower = Follower(agent.server) if setup == "agent_follower" else None
                    try:
                        for workload, measure in workloads.items():
                            results[setup][workload].append(measure())
                    finally:
                        if follower is not None:
                            follower.stop()
                            readings.followed_flows += follower.flows
            if not agent.running():
                readings.ready_s.append(agent.start())
            cost = program_cost(node, [client, server], workloads)
            readings.take(agent)
        finally:
            agent.close()
            for process in (iperf, echo):
                process.kill()
                process.wait()

    for workload, name, unit in WORKLOADS:
        print(
            bench_line(
                name + suffix,
                {
                    f"no_agent_{unit}": median(results["no_agent"][workload]),
                    f"agent_{unit}": median(results["agent"][workload]),
                    f"agent_follower_{unit}": median(results["agent_follower"][workload]),
                },
            )
        )
        for setup in ("agent", "agent_follower"):
            print(bench_line(f"{name}{suffix}[{setup}]", ratio_figures(results, setup, workload)))
    for workload, figures in cost.items():
        print(bench_line(f"datapath_program_cost{suffix}[{workload}]", figures))
    print(
        bench_line(
            "datapath_agent" + suffix,
            {
                "ready_s_median": median(readings.ready_s),
                "rss_mib_max": max(readings.rss_mib),
                "followed_flows": readings.followed_flows,
            },
        )
    )
    drops = sum(readings.drops.values())
    print(
        bench_line(
            "datapath_run" + suffix,
            {"quick": int(args.quick), "rounds": rounds, "seconds_per_test": seconds, "drops": drops},
        )
    )
    for (reason, protocol), count in sorted(readings.drops.items()):
        print(f"# dropped: {count:.0f} {protocol} flows, reason {reason}")
    for line in readings.drop_flows[:10]:
        print(f"#   {line}")
    if args.quick:
        print("# quick run: too few and too short rounds for the ratios to mean anything")
    if readings.own_traffic_dropped():
        print("# FAILED: the benchmark's own traffic was dropped")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
