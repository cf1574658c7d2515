"""What the policy datapath costs between pods on two nodes: the client on node-1, the server on node-2,
routed across the underlay (meshagent.testing.cluster), with no agent vs with each node's datapath
attached (client's egress enforced on node-1, server's ingress on node-2, each with its own connection
tracking) and a policy allowing the traffic. Rounds alternate the two set-ups; printed as ratios, beside
bench/datapath_overhead.py's same-node figures.

Figures: TCP throughput (iperf3), request/response rate (1-byte ping-pong on one connection), and
connection rate (connect, 1-byte exchange, close). The pods are dual-stack; `--family ipv6` runs the
same workloads between their IPv6 addresses (routed across the underlay's IPv6 network), and its lines
carry an `_ipv6` suffix.

    .venv/bin/python bench/datapath_overhead_cross_node.py [--quick] [--family ipv6]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datapath_overhead import ECHO_PORT, IPERF_PORT, policy_state, throughput_gbps, tool_rate
from meshagent.datapath.datapath import Datapath
from meshagent.model.kernel_state import KernelState
from meshagent.testing.benchtools import bench_line, build_tcpbench, median
from meshagent.testing.cluster import ClusterTopology
from meshagent.testing.topology import Pod


def local_state(whole: KernelState, local: Pod) -> KernelState:
    """One node's share of the two-pod state: its own endpoint and that endpoint's rules; every address."""
    endpoints = frozenset(e for e in whole.endpoints if e.ifindex == local.ifindex and e.ipv4 == local.ip)
    ids = {e.endpoint_id for e in endpoints}
    return KernelState(
        endpoints=endpoints,
        ipcache=whole.ipcache,
        policy=frozenset(p for p in whole.policy if p.endpoint_id in ids),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short rounds, for a smoke run")
    parser.add_argument("--family", choices=("ipv4", "ipv6"), default="ipv4", help="address family measured")
    args = parser.parse_args(argv)
    family = args.family
    suffix = "_ipv6" if family == "ipv6" else ""
    seconds = 1.0 if args.quick else 4.0
    rounds = 2 if args.quick else 3

    tool = build_tcpbench()
    run = uuid.uuid4().hex[:8]
    with ClusterTopology(2) as cluster:
        first, second = cluster.nodes
        client = first.add_pod("client")
        server = second.add_pod("server")
        client.run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        iperf = server.popen(
            "iperf3", "-s", "-p", str(IPERF_PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        echo = server.popen(str(tool), "server", str(ECHO_PORT), stdout=subprocess.PIPE)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        datapaths = [
            Datapath(pin_dir=Path("/sys/fs/bpf") / f"meshagent-bench-{run}-{node.index}", netns=node.netns)
            for node in cluster.nodes
        ]
        whole = policy_state(client, server)
        states = [local_state(whole, client), local_state(whole, server)]
        workloads = {
            "throughput": lambda: throughput_gbps(client, server, seconds, family),
            "rr": lambda: tool_rate(client, tool, "rr", server, seconds, family),
            "crr": lambda: tool_rate(client, tool, "crr", server, seconds, family, "4"),
        }
        results: dict[str, dict[str, list[float]]] = {
            setup: {w: [] for w in workloads} for setup in ("baseline", "agent")
        }
        try:
            for datapath in datapaths:
                datapath.load()
            for round_index in range(rounds):
                order = ("baseline", "agent") if round_index % 2 == 0 else ("agent", "baseline")
                for setup in order:
                    for datapath, state in zip(datapaths, states, strict=True):
                        datapath.apply(state if setup == "agent" else KernelState())
                        datapath.flush_conntrack()
                    for workload, measure in workloads.items():
                        results[setup][workload].append(measure())
            drops = sum(
                c.packets
                for datapath in datapaths
                for (reason, _), c in datapath.counters().items()
                if reason != 0
            )
        finally:
            for datapath in datapaths:
                datapath.apply(KernelState())
                datapath.uninstall()
            for process in (iperf, echo):
                process.kill()
                process.wait()

    base, agent = results["baseline"], results["agent"]
    for name, unit, key in (
        ("datapath_cross_node_tcp_throughput", "gbps", "throughput"),
        ("datapath_cross_node_request_response", "per_s", "rr"),
        ("datapath_cross_node_connection_rate", "per_s", "crr"),
    ):
        b, a = median(base[key]), median(agent[key])
        spread = {f"agent_{unit}_min": min(agent[key]), f"agent_{unit}_max": max(agent[key])}
        print(
            bench_line(
                name + suffix,
                {f"baseline_{unit}": b, f"agent_{unit}": a, **spread},
                ratio=a / b if b else None,
            )
        )
    print(
        bench_line(
            "datapath_cross_node_run" + suffix,
            {"rounds": rounds, "seconds_per_test": seconds, "drops": drops},
        )
    )
    return 0 if drops == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
