"""What an IPv6 packet costs the endpoint programs next to an IPv4 one, measured side by side.

Two dual-stack pods on one node under the whole agent (`meshagent run`, both pods isolated both ways with
rules for exactly this traffic, as bench/datapath_overhead.py sets them up). Each round runs the same
workloads over IPv4 and over IPv6, in alternating order, and reads the kernel's run-time statistics of
the programs attached to the pods' interfaces (an IPv6 packet's time includes the tail call into the IPv6
program and that program's run). Workloads: request/response on one connection (established traffic)
and one connection per request (setup, verdict events and teardown).

Prints, per workload and program, the median nanoseconds per packet of each family and the per-round
ratio IPv6 / IPv4 (median, lowest, highest). Goal: IPv6 within 1.2 times IPv4.

    .venv/bin/python bench/family_cost.py [--quick] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datapath_overhead import ECHO_PORT, program_ids, tool_rate, write_manifests
from meshagent.testing.agents import NodeAgent
from meshagent.testing.benchtools import ProgramStats, bench_line, build_tcpbench, median, spread
from meshagent.testing.cluster import ClusterTopology

FAMILIES = ("ipv4", "ipv6")
PROGRAMS = ("from_endpoint", "to_endpoint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two 1-second rounds: a smoke run, no ratios")
    parser.add_argument("--rounds", type=int, help="rounds of both families (default 7, quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per workload (default 3, quick 1)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    rounds = args.rounds or (2 if args.quick else 7)

    tool = build_tcpbench()
    # cost[workload][program][family]: ns per packet, one value per round
    cost: dict[str, dict[str, dict[str, list[float]]]] = {}
    with ClusterTopology(1) as cluster, tempfile.TemporaryDirectory() as tmp:
        node = cluster.nodes[0]
        client = node.add_pod("client", ipv6=node.pod_cidr6[10])
        server = node.add_pod("server", ipv6=node.pod_cidr6[20])
        client.run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        write_manifests(Path(tmp) / "manifests", node, client, server)
        echo = server.popen(str(tool), "server", str(ECHO_PORT), stdout=subprocess.PIPE)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        agent = NodeAgent(node, Path(tmp), manifests=Path(tmp) / "manifests", log_level="warning")
        stats = ProgramStats()
        try:
            agent.start()
            ids = program_ids(node, [client, server])
            if not all(ids.values()):
                raise RuntimeError(f"the agent's programs are not attached to the pods' interfaces: {ids}")

            def workloads(family: str) -> dict[str, Callable[[], float]]:
                return {
                    "rr": lambda: tool_rate(client, tool, "rr", server, seconds, family),
                    "crr": lambda: tool_rate(client, tool, "crr", server, seconds, family, "4"),
                }

            for round_index in range(rounds):
                order = FAMILIES if round_index % 2 == 0 else tuple(reversed(FAMILIES))
                for family in order:
                    for workload, measure in workloads(family).items():
                        before = {name: [stats.sample(pid) for pid in pids] for name, pids in ids.items()}
                        measure()
                        for name, pids in ids.items():
                            after = [stats.sample(pid) for pid in pids]
                            spent = sum(a[0] - b[0] for a, b in zip(after, before[name], strict=True))
                            runs = sum(a[1] - b[1] for a, b in zip(after, before[name], strict=True))
                            if not runs:
                                raise RuntimeError(f"{name} ran no packet of {workload} over {family}")
                            per_family = cost.setdefault(workload, {}).setdefault(name, {})
                            per_family.setdefault(family, []).append(spent / runs)
        finally:
            stats.close()
            agent.close()
            echo.kill()
            echo.wait()

    for workload, programs in cost.items():
        for name in PROGRAMS:
            values = programs[name]
            ratios = [six / four for four, six in zip(values["ipv4"], values["ipv6"], strict=True) if four]
            low, high = spread(ratios)
            figures = {
                "ipv4_ns_per_packet": median(values["ipv4"]),
                "ipv6_ns_per_packet": median(values["ipv6"]),
                "ipv6_to_ipv4_median": median(ratios),
                "ipv6_to_ipv4_min": low,
                "ipv6_to_ipv4_max": high,
            }
            print(bench_line(f"family_program_cost[{workload},{name}]", figures))
    if args.quick:
        print("(quick run: the figures only show that the benchmark runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
