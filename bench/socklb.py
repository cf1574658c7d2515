"""Benchmark: the socket load-balancer against a direct connection and against iptables DNAT as
kube-proxy programs it.

A client pod connects (tcpbench crr: connect, 1-byte request/response, close) and exchanges (tcpbench rr:
1-byte ping-pong on one connection) with an echo server pod:
  direct     to the backend's own address (no Service)
  socklb     to a ClusterIP translated by our cgroup connect hook (client process in our cgroup)
  iptables   to a ClusterIP DNATed by kube-proxy-style rules in the client pod (KUBE-SERVICES with one
             match per Service, KUBE-SVC-*, KUBE-SEP-* DNAT), the measured Service being the last one
At 100, 1,000 and 10,000 Services (the others point at the same backend), ours is one hash lookup per
connect; kube-proxy's first packet walks the KUBE-SERVICES list.
Sockmap acceleration: iperf3 between two pods with the splice on and off, 1, 16 and 128 KiB writes.
The pods are dual-stack; `--family ipv6` runs everything over IPv6 (IPv6 ClusterIPs through the connect6
hook, ip6tables for kube-proxy's rules, IPv6 sockets spliced), and its lines carry an `_ipv6` suffix.

    .venv/bin/python bench/socklb.py [--quick] [--family ipv6]

Prints BENCH lines (ratio = socklb / direct for the plain runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from meshagent.datapath.socklb import SocketLB, cgroup2_mount
from meshagent.model.kernel_state import Protocol
from meshagent.model.services import Frontend, LBBackend, LBEntry
from meshagent.testing.benchtools import bench_line, build_tcpbench, median
from meshagent.testing.topology import Pod, Topology

ECHO_PORT = 5201
SERVICE_PORT = 80
SCALES = (100, 1000, 10000)
BASE_VIP = int(IPv4Address("10.96.0.0"))
BASE_VIP6 = int(IPv6Address("fd00:10:96::"))  # a Service CIDR of a dual-stack cluster's IPv6 family

Address = IPv4Address | IPv6Address


def vip(index: int, family: str = "ipv4") -> Address:
    if family == "ipv6":
        return IPv6Address(BASE_VIP6 + 10 + index)
    return IPv4Address(BASE_VIP + 10 + index)


def address_of(pod: Pod, family: str) -> Address:
    if family == "ipv6":
        if pod.ipv6 is None:
            raise ValueError(f"pod {pod.name} has no IPv6 address")
        return pod.ipv6
    return pod.ip


def kube_proxy_rules(count: int, backend: Address) -> str:
    """iptables-restore input shaped like kube-proxy's iptables mode for `count` one-endpoint Services
    (ip6tables-restore input for an IPv6 backend: the same rules, /128 and a bracketed destination)."""
    ipv6 = isinstance(backend, IPv6Address)
    family = "ipv6" if ipv6 else "ipv4"
    host = 128 if ipv6 else 32
    destination = f"[{backend}]:{ECHO_PORT}" if ipv6 else f"{backend}:{ECHO_PORT}"
    lines = ["*nat", ":KUBE-SERVICES - [0:0]"]
    for index in range(count):
        lines += [f":KUBE-SVC-{index} - [0:0]", f":KUBE-SEP-{index} - [0:0]"]
    lines.append("-A OUTPUT -m comment --comment kubernetes-services -j KUBE-SERVICES")
    for index in range(count):
        lines.append(
            f"-A KUBE-SERVICES -d {vip(index, family)}/{host} -p tcp -m comment --comment svc-{index} "
            f"-m tcp --dport {SERVICE_PORT} -j KUBE-SVC-{index}"
        )
    for index in range(count):
        lines.append(f"-A KUBE-SVC-{index} -j KUBE-SEP-{index}")
        lines.append(f"-A KUBE-SEP-{index} -p tcp -m tcp -j DNAT --to-destination {destination}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _in_cgroup(cgroup: Path) -> Callable[[], None]:
    def place() -> None:
        with open(cgroup / "cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))

    return place


def rate(
    client: Pod, tool: Path, mode: str, ip: Address, port: int, seconds: float, cgroup: Path | None
) -> float:
    argv = client.argv(str(tool), mode, str(ip), str(port), str(seconds), *(["2"] if mode == "crr" else []))
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
        preexec_fn=_in_cgroup(cgroup) if cgroup else None,
    )
    return float(result.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short rounds, for a smoke run")
    parser.add_argument("--family", choices=("ipv4", "ipv6"), default="ipv4", help="address family measured")
    args = parser.parse_args(argv)
    family = args.family
    seconds = 1.0 if args.quick else 3.0
    rounds = 1 if args.quick else 5
    tool = build_tcpbench()
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-lbbench-{uuid.uuid4().hex[:8]}"
    cgroup = cgroup2_mount() / f"meshagent-lbbench-{uuid.uuid4().hex[:8]}"
    cgroup.mkdir()
    lb = SocketLB(pin_dir=pin_dir, cgroup=cgroup)
    try:
        with Topology() as topo:
            client = topo.add_pod("client", "10.244.9.10")
            server = topo.add_pod("server", "10.244.9.20")
            client.run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
            echo = server.popen(str(tool), "server", str(ECHO_PORT), stdout=subprocess.PIPE)
            assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
            lb.load()
            lb.attach()
            try:
                results = run(lb, client, server, tool, seconds, rounds, cgroup, family)
                results += sockmap(client, server, seconds, rounds, cgroup, family)
            finally:
                client.run(iptables_command(family), "-t", "nat", "-F")
                echo.kill()
                echo.wait()
    finally:
        lb.uninstall()
        if pin_dir.exists():
            pin_dir.rmdir()
        for pid in (cgroup / "cgroup.procs").read_text().split():
            os.kill(int(pid), 9)
        cgroup.rmdir()
    for line in results:
        print(line, flush=True)
    return 0


def iptables_command(family: str) -> str:
    return "ip6tables" if family == "ipv6" else "iptables"


def entries(count: int, backend: Address) -> dict[Frontend, LBEntry]:
    family = "ipv6" if isinstance(backend, IPv6Address) else "ipv4"
    out = {}
    for index in range(count):
        frontend = Frontend(vip(index, family), SERVICE_PORT, Protocol.TCP)
        out[frontend] = LBEntry(frontend, (LBBackend(backend, ECHO_PORT, 1),))
    return out


def run(
    lb: SocketLB, client: Pod, server: Pod, tool: Path, seconds: float, rounds: int, cgroup: Path, family: str
) -> list[str]:
    lines = []
    suffix = "_ipv6" if family == "ipv6" else ""
    backend = address_of(server, family)
    lb.apply(entries(1, backend))
    figures: dict[str, list[float]] = {k: [] for k in ("direct_crr", "lb_crr", "direct_rr", "lb_rr")}
    for round_index in range(rounds):
        order = ("direct", "lb") if round_index % 2 == 0 else ("lb", "direct")
        for kind in ("crr", "rr"):
            for setup in order:
                if setup == "direct":
                    figures[f"direct_{kind}"].append(
                        rate(client, tool, kind, backend, ECHO_PORT, seconds, None)
                    )
                else:
                    figures[f"lb_{kind}"].append(
                        rate(client, tool, kind, vip(0, family), SERVICE_PORT, seconds, cgroup)
                    )
    for kind in ("crr", "rr"):
        direct, ours = median(figures[f"direct_{kind}"]), median(figures[f"lb_{kind}"])
        # The machine is shared and noisy: the median of each round's own ratio is steadier than the
        # ratio of medians.
        paired = median(
            [b / a for a, b in zip(figures[f"direct_{kind}"], figures[f"lb_{kind}"], strict=True)]
        )
        name = "socklb_connection_rate" if kind == "crr" else "socklb_request_response"
        lines.append(bench_line(name + suffix, {"direct_per_s": direct, "vip_per_s": ours}, ratio=paired))
    iptables = iptables_command(family)
    if shutil.which(f"{iptables}-restore") is None:
        # Not installed by scripts/install.sh; the comparison needs Debian's `iptables` package.
        lines.append(f"BENCH socklb_vs_iptables{suffix} skipped=1 ({iptables}-restore not installed)")
        return lines
    for count in SCALES:
        last = vip(count - 1, family)  # the Service kube-proxy's list reaches last
        lb.apply(entries(count, backend))
        rules = kube_proxy_rules(count, backend)
        ours_runs, theirs_runs = [], []
        for _ in range(rounds):
            # Alternate, and never both at once: a node with our load-balancer has no kube-proxy rules.
            ours_runs.append(rate(client, tool, "crr", last, SERVICE_PORT, seconds, cgroup))
            restore = subprocess.run(
                client.argv(f"{iptables}-restore"), input=rules, text=True, capture_output=True, timeout=600
            )
            if restore.returncode != 0:
                raise RuntimeError(f"{iptables}-restore: {restore.stderr.strip()}")
            theirs_runs.append(rate(client, tool, "crr", last, SERVICE_PORT, seconds, None))
            client.run(iptables, "-t", "nat", "-F")
            client.run(iptables, "-t", "nat", "-X")
        ours, theirs = median(ours_runs), median(theirs_runs)
        lines.append(
            bench_line(
                f"socklb_vs_iptables_crr_{count}_services{suffix}",
                {"socklb_per_s": ours, "iptables_per_s": theirs},
                ratio=ours / theirs,
            )
        )
    lb.apply({})
    return lines


def iperf_gbps(client: Pod, server: Address, port: int, size: int, seconds: float, cgroup: Path) -> float:
    argv = client.argv(
        "iperf3", "-c", str(server), "-p", str(port), "-t", str(seconds), "-l", str(size), "-J"
    )
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, preexec_fn=_in_cgroup(cgroup)
    )
    return float(json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def sockmap(client: Pod, server: Pod, seconds: float, rounds: int, plain: Path, family: str) -> list[str]:
    """iperf3 between two pods of a cgroup with the splice (on) and of one without (off)."""
    suffix = "_ipv6" if family == "ipv6" else ""
    address = address_of(server, family)
    accel_cgroup = cgroup2_mount() / f"meshagent-lbaccel-{uuid.uuid4().hex[:8]}"
    accel_cgroup.mkdir()
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-lbaccel-{uuid.uuid4().hex[:8]}"
    accel = SocketLB(pin_dir=pin_dir, cgroup=accel_cgroup, accelerate=True)
    servers = []
    lines = []
    try:
        accel.load()
        accel.attach()
        for port, cgroup in ((5301, accel_cgroup), (5302, plain)):
            servers.append(
                subprocess.Popen(
                    server.argv("iperf3", "-s", "-B", str(address), "-p", str(port)),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=_in_cgroup(cgroup),
                )
            )
        time.sleep(0.5)
        for size in (1024, 16384, 131072):
            on, off = [], []
            for _ in range(rounds):
                on.append(iperf_gbps(client, address, 5301, size, seconds, accel_cgroup))
                off.append(iperf_gbps(client, address, 5302, size, seconds, plain))
            lines.append(
                bench_line(
                    f"sockmap_tcp_{size // 1024}k_writes{suffix}",
                    {"off_gbps": median(off), "on_gbps": median(on)},
                    ratio=median(on) / median(off),
                )
            )
        lines.append(
            bench_line(
                f"sockmap_redirected_messages{suffix}", {"count": accel.accel_counters()["redirected"]}
            )
        )
    finally:
        for process in servers:
            process.kill()
            process.wait()
        accel.uninstall()
        if pin_dir.exists():
            pin_dir.rmdir()
        for pid in (accel_cgroup / "cgroup.procs").read_text().split():
            os.kill(int(pid), 9)
        accel_cgroup.rmdir()
    return lines


if __name__ == "__main__":
    sys.exit(main())
