"""What WireGuard between nodes costs pod traffic: a client pod on node-1, a server pod on node-2, routed
across the underlay (meshagent.testing.cluster) in plaintext vs through each node's WireGuard device set
up as the agent sets it up (meshagent.datapath.wireguard: one peer per node, the other node's pod as
allowed IP, a /32 or /128 route through the device, MTU of the underlay less 80). Rounds alternate the
two set-ups; printed as ratios with the spread of the rounds.

The pods are dual-stack; `--family ipv6` measures between their IPv6 addresses (inside the tunnel, which
runs between the nodes' IPv4 addresses as the agent's does; in plaintext, over the IPv6 underlay), and
the figures' names end in `_ipv6`.

Figures: TCP throughput (iperf3), request/response rate (1-byte ping-pong on one connection) and
connection rate (connect, 1-byte exchange, close).

Needs a kernel with WireGuard (this project's VM kernels have it), run as root from the repository:

    .venv/bin/python bench/wireguard_overhead.py [--quick] [--family ipv6]

In a guest of the kernel matrix (vm-tests/run.sh boots them the same way), for example:

    vng --run <kernel> --disable-kvm --force-9p --cpus 2 -m 2G --cwd $PWD \\
        --exec ".venv/bin/python bench/wireguard_overhead.py"
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datapath_overhead import ECHO_PORT, IPERF_PORT, throughput_gbps, tool_rate
from meshagent.datapath.wireguard import WIREGUARD_OVERHEAD, WireguardDevice, WireguardError
from meshagent.testing.benchtools import bench_line, build_tcpbench, median
from meshagent.testing.cluster import ClusterNode, ClusterTopology
from meshagent.testing.topology import Pod
from meshagent.wireguard.keys import generate_key_pair
from meshagent.wireguard.peers import Address, Peer
from meshagent.wireguard.updates import plan_update

PORT = 51871


def encrypt(nodes: list[ClusterNode], pods: list[Pod], family: str) -> list[WireguardDevice]:
    """Each node's device with the other node as its one peer, the other's pod (its address of `family`)
    routed through it."""
    pairs = [generate_key_pair() for _ in nodes]
    devices = [WireguardDevice(netns=node.netns) for node in nodes]
    for index, (node, device) in enumerate(zip(nodes, devices, strict=True)):
        mtu = device.underlay_mtu(node.address) - WIREGUARD_OVERHEAD
        device.ensure(private_key=pairs[index].private_key, port=PORT, mtu=mtu)
        other = 1 - index
        peer = Peer(
            node=nodes[other].name,
            public_key=pairs[other].public_key,
            endpoint=nodes[other].address,
            allowed_ips=frozenset({pod_address(pods[other], family)}),
        )
        update = plan_update(device.peers(), {peer.public_key: peer}, device.routes(), port=PORT)
        device.apply(update, port=PORT, source=node.address)
    return devices


def pod_address(pod: Pod, family: str) -> Address:
    if family == "ipv6":
        assert pod.ipv6 is not None, f"{pod.name} has no IPv6 address"
        return pod.ipv6
    return pod.ip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short rounds, for a smoke run")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per set-up (default 5, quick 2)")
    parser.add_argument("--family", choices=("ipv4", "ipv6"), default="ipv4", help="address family measured")
    args = parser.parse_args(argv)
    family = args.family
    suffix = "_ipv6" if family == "ipv6" else ""
    seconds = 1.0 if args.quick else 4.0
    rounds = args.rounds or (2 if args.quick else 5)

    tool = build_tcpbench()
    with ClusterTopology(2) as cluster:
        first, second = cluster.nodes
        client = first.add_pod("client", ipv6=first.pod_cidr6[10])
        server = second.add_pod("server", ipv6=second.pod_cidr6[20])
        client.run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        iperf = server.popen(
            "iperf3", "-s", "-p", str(IPERF_PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        echo = server.popen(str(tool), "server", str(ECHO_PORT), stdout=subprocess.PIPE)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        workloads = {
            "throughput": lambda: throughput_gbps(client, server, seconds, family),
            "rr": lambda: tool_rate(client, tool, "rr", server, seconds, family),
            "crr": lambda: tool_rate(client, tool, "crr", server, seconds, family, "4"),
        }
        results: dict[str, dict[str, list[float]]] = {
            s: {w: [] for w in workloads} for s in ("plain", "wireguard")
        }
        handshaken = True
        try:
            for round_index in range(rounds):
                order = ("plain", "wireguard") if round_index % 2 == 0 else ("wireguard", "plain")
                for setup in order:
                    devices: list[WireguardDevice] = []
                    if setup == "wireguard":
                        try:
                            devices = encrypt([first, second], [client, server], family)
                        except WireguardError as err:
                            print(f"this kernel has no WireGuard ({err}); run in a VM guest", file=sys.stderr)
                            return 2
                        # The handshake, not timed.
                        client.probe("tcp", pod_address(server, family), ECHO_PORT, timeout=10)
                    try:
                        for workload, measure in workloads.items():
                            results[setup][workload].append(measure())
                        if devices:
                            handshaken &= all(p.last_handshake > 0 for p in devices[0].peers().values())
                    finally:
                        for device in devices:
                            device.delete()
        finally:
            for process in (iperf, echo):
                process.kill()
                process.wait()

    plain, encrypted = results["plain"], results["wireguard"]
    for name, unit, key in (
        ("wireguard_tcp_throughput", "gbps", "throughput"),
        ("wireguard_request_response", "per_s", "rr"),
        ("wireguard_connection_rate", "per_s", "crr"),
    ):
        p, e = median(plain[key]), median(encrypted[key])
        # The spread of the ratio: each wireguard round against the plain median, lowest and highest.
        ratios = [value / p for value in encrypted[key]] if p else []
        figures = {
            f"plain_{unit}": p,
            f"wireguard_{unit}": e,
            f"plain_{unit}_min": min(plain[key]),
            f"plain_{unit}_max": max(plain[key]),
            f"wireguard_{unit}_min": min(encrypted[key]),
            f"wireguard_{unit}_max": max(encrypted[key]),
            "ratio_min": min(ratios) if ratios else float("nan"),
            "ratio_max": max(ratios) if ratios else float("nan"),
        }
        print(bench_line(name + suffix, figures, ratio=e / p if p else None))
    print(
        bench_line(
            "wireguard_run" + suffix,
            {"rounds": rounds, "seconds_per_test": seconds, "handshaken": handshaken},
        )
    )
    return 0 if handshaken else 1


if __name__ == "__main__":
    sys.exit(main())
