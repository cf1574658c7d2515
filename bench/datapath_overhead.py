"""What the policy datapath costs: two pods with no agent vs with the datapath attached and a policy
allowing the traffic, measured side by side in one run (rounds alternate the two set-ups, so a noisy
machine affects both alike) and printed as ratios.

Figures: TCP throughput (iperf3), request/response rate (1-byte ping-pong on one connection), and
connection rate (connect, 1-byte exchange, close). Goals: throughput and request/response >= 0.95 of
no agent, connection rate >= 0.90. `--family ipv6` measures the same between the pods' IPv6 addresses
(the IPv6 programs, entered by tail call, with their own maps); its lines carry an `_ipv6` suffix.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from meshagent.datapath.datapath import Datapath
from meshagent.model.kernel_state import (
    Action,
    Direction,
    EndpointEntry,
    IPCacheEntry,
    KernelState,
    PolicyEntry,
    Protocol,
)
from meshagent.testing.benchtools import ProgramStats, bench_line, build_tcpbench, median
from meshagent.testing.topology import Pod, Topology

IPERF_PORT = 5201
ECHO_PORT = 7000
CLIENT_ID, SERVER_ID = 1001, 1002


def policy_state(client: Pod, server: Pod) -> KernelState:
    """Both pods isolated both ways, with rules allowing exactly the benchmark's traffic."""
    endpoints = frozenset(
        {
            EndpointEntry(
                client.ifindex,
                1,
                CLIENT_ID,
                client.ip,
                ipv6=client.ipv6,
                enforce_ingress=True,
                enforce_egress=True,
            ),
            EndpointEntry(
                server.ifindex,
                2,
                SERVER_ID,
                server.ip,
                ipv6=server.ipv6,
                enforce_ingress=True,
                enforce_egress=True,
            ),
        }
    )
    ipcache = {
        IPCacheEntry(cidr=IPv4Network(f"{client.ip}/32"), identity=CLIENT_ID),
        IPCacheEntry(cidr=IPv4Network(f"{server.ip}/32"), identity=SERVER_ID),
    }
    for pod, identity in ((client, CLIENT_ID), (server, SERVER_ID)):
        if pod.ipv6 is not None:
            ipcache.add(IPCacheEntry(cidr=IPv6Network(f"{pod.ipv6}/128"), identity=identity))
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
    return KernelState(endpoints=endpoints, ipcache=frozenset(ipcache), policy=policy)


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
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-bench-{uuid.uuid4().hex[:8]}"
    with Topology() as topo:
        client = topo.add_pod("client", "10.244.9.10", ipv6="fd00:9::10")
        server = topo.add_pod("server", "10.244.9.20", ipv6="fd00:9::20")
        # Many short connections: let the client reuse ports still in TIME_WAIT.
        client.run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        iperf = server.popen(
            "iperf3", "-s", "-p", str(IPERF_PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        echo = server.popen(str(tool), "server", str(ECHO_PORT), stdout=subprocess.PIPE)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        datapath = Datapath(pin_dir=pin_dir, netns=topo.node)
        datapath.load()
        events = 0

        def count(_event: object) -> None:
            nonlocal events
            events += 1

        datapath.start_events(count)
        with_policy = policy_state(client, server)
        workloads = {
            "throughput": lambda: throughput_gbps(client, server, seconds, family),
            "rr": lambda: tool_rate(client, tool, "rr", server, seconds, family),
            "crr": lambda: tool_rate(client, tool, "crr", server, seconds, family, "4"),
        }
        results: dict[str, dict[str, list[float]]] = {
            setup: {w: [] for w in workloads} for setup in ("baseline", "agent")
        }
        cost: dict[str, dict[str, float]] = {}
        try:
            for round_index in range(rounds):
                order = ("baseline", "agent") if round_index % 2 == 0 else ("agent", "baseline")
                for setup in order:
                    datapath.apply(with_policy if setup == "agent" else KernelState())
                    datapath.flush_conntrack()
                    for workload, measure in workloads.items():
                        results[setup][workload].append(measure())
            # A last round with the kernel's own accounting on (it adds a little to every run, so it stays
            # out of the ratios): nanoseconds per packet in each program, per workload.
            datapath.apply(with_policy)
            stats = ProgramStats()
            try:
                # The kernel counts a tail-called program's time in the program that entered it: with
                # --family ipv6 these figures include the IPv6 programs.
                programs = {
                    name: stats.program_id(datapath.bpf.funcs[name.encode()].fd)
                    for name in ("ma_from_endpoint", "ma_to_endpoint")
                }
                for workload, measure in workloads.items():
                    before = {name: stats.sample(pid) for name, pid in programs.items()}
                    measure()
                    for name, pid in programs.items():
                        spent, runs = (a - b for a, b in zip(stats.sample(pid), before[name], strict=True))
                        cost.setdefault(workload, {})[f"{name.removeprefix('ma_')}_ns_per_packet"] = (
                            spent / runs if runs else 0.0
                        )
            finally:
                stats.close()
            drops = sum(c.packets for (reason, _), c in datapath.counters().items() if reason != 0)
        finally:
            datapath.apply(KernelState())
            datapath.uninstall()
            for process in (iperf, echo):
                process.kill()
                process.wait()

    base, agent = results["baseline"], results["agent"]
    lines = [
        ("datapath_tcp_throughput", "gbps", "throughput"),
        ("datapath_request_response", "per_s", "rr"),
        ("datapath_connection_rate", "per_s", "crr"),
    ]
    for name, unit, key in lines:
        b, a = median(base[key]), median(agent[key])
        print(
            bench_line(name + suffix, {f"baseline_{unit}": b, f"agent_{unit}": a}, ratio=a / b if b else None)
        )
    for workload, figures in cost.items():
        print(bench_line(f"datapath_program_cost{suffix}[{workload}]", figures))
    print(
        bench_line(
            "datapath_run" + suffix,
            {"rounds": rounds, "seconds_per_test": seconds, "events": events, "drops": drops},
        )
    )
    return 0 if drops == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
