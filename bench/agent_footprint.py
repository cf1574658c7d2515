"""Benchmark: the agent as a process: time from start to ready, resident memory at idle and after a burst
of new connections (each one several flows), CPU at idle (its timers and pollers, front process included)
and per 1,000 new connections/s, and the flows it took in. Runs `meshagent run` on the demo's cluster in a
box. Goals: ready < 3 s, RSS < 150 MiB idle and < 200 MiB after load, idle CPU < 1 % of a core.

    .venv/bin/python bench/agent_footprint.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from meshagent.demo import manifests
from meshagent.demo.manifests import PODS
from meshagent.testing.benchtools import bench_line, build_tcpbench, cpu_seconds, rss_mib
from meshagent.testing.topology import Topology

NODE = "bench-node"


def agent_status(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as answer:
            data: dict[str, object] = json.loads(answer.read())
            return data
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    load_seconds = 3.0 if args.quick else 10.0
    idle_seconds = 5.0 if args.quick else 20.0
    tool = build_tcpbench()
    health_port = 19000 + os.getpid() % 1000
    with Topology() as topo, tempfile.TemporaryDirectory() as tmp:
        pods = {spec.name: topo.add_pod(spec.name, spec.ip) for spec in PODS}
        frontend = next(spec for spec in PODS if spec.name == "frontend")
        server = pods["frontend"].popen(str(tool), "server", str(frontend.port), stdout=subprocess.PIPE)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        pods["stray"].run(
            "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000"
        )
        # Dual-stack pods: their manifests list the IPv6 addresses the topology gave them.
        placement = {name: (NODE, pod.ip, pod.ipv6) for name, pod in pods.items() if pod.ipv6 is not None}
        manifests.write(Path(tmp) / "manifests", NODE, placement=placement)
        pin_dir = Path("/sys/fs/bpf") / f"meshagent-bench-{uuid.uuid4().hex[:8]}"
        command = [
            sys.executable,
            "-m",
            "meshagent.cli.main",
            "run",
            "--manifests",
            f"{tmp}/manifests",
            "--node",
            NODE,
            "--node-netns",
            topo.node,
            "--pin-dir",
            str(pin_dir),
            "--observer-socket",
            f"{tmp}/o.sock",
            "--metrics-listen",
            "127.0.0.1:0",
            "--health-listen",
            f"127.0.0.1:{health_port}",
            "--cleanup",
            "--log-level",
            "warning",
        ]
        started = time.monotonic()
        agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not (agent_status(health_port) or {}).get("ready"):
                if time.monotonic() - started > 120 or agent.poll() is not None:
                    raise RuntimeError("the agent did not become ready")
                time.sleep(0.05)
            ready_s = time.monotonic() - started
            time.sleep(5)  # past the first sync's after-effects
            idle = rss_mib(agent.pid)
            cpu_before = cpu_seconds(agent.pid)
            time.sleep(idle_seconds)
            idle_cpu = (cpu_seconds(agent.pid) - cpu_before) / idle_seconds
            cpu_before = cpu_seconds(agent.pid)
            before = int((agent_status(health_port) or {}).get("flows_seen", 0))  # type: ignore[call-overload]
            rate = float(
                pods["stray"]
                .run(
                    str(tool),
                    "crr",
                    str(frontend.ip),
                    str(frontend.port),
                    str(load_seconds),
                    "2",
                    timeout=load_seconds + 30,
                )
                .stdout
            )
            time.sleep(2)  # let the reader drain: its work belongs to the load
            load_cpu = cpu_seconds(agent.pid) - cpu_before - idle_cpu * 2
            loaded = rss_mib(agent.pid)
            status = agent_status(health_port) or {}
            flows = int(status.get("flows_seen", 0)) - before  # type: ignore[call-overload]
            lost = int(status.get("events_lost", 0))  # type: ignore[call-overload]
        finally:
            agent.terminate()
            agent.wait(timeout=30)
            server.kill()
    print(bench_line("agent_startup", {"ready_s": ready_s}))
    print(bench_line("agent_memory", {"idle_rss_mib": idle, "after_load_rss_mib": loaded}))
    print(
        bench_line(
            "agent_cpu",
            {
                "idle_core_percent": idle_cpu * 100,
                # cores busy per 1,000 new connections/s, in percent of a core
                "core_percent_per_1k_conn_per_s": load_cpu / load_seconds / (rate / 1000) * 100,
            },
        )
    )
    print(
        bench_line(
            "agent_flows_under_load",
            {
                "connections_per_s": rate,
                "flows": flows,
                "flows_per_s": flows / load_seconds,
                "kernel_lost": lost,
            },
        )
    )
    if args.quick:
        print("# quick run: a short idle and load; the CPU figures are rough")
    return 0


if __name__ == "__main__":
    sys.exit(main())
