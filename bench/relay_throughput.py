"""Benchmark: flows/s through `meshagent relay` beside the same flows read from one node directly.

Each node is a flow server of its own (a process serving a ring of N synthetic flows, as an agent's flow
API does); the relay is `meshagent relay` (a process) before 1, 2 or 3 of them; the reader is the grpc-go
client (bench/tools/flowfollow, `getflows --number`), reading all flows once per round. Printed per
variant: the median flows/s with its spread over the rounds, and the ratio to reading one node directly.

What it says: whether the relay (fan-out, time merge of every node's answer, the whole answer re-framed
by our gRPC server) keeps up with the nodes behind it, and whether its server or its upstream reads are
the limit (relay over one node against that node directly).

Run: .venv/bin/python bench/relay_throughput.py [--quick] [--flows N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_pipeline import make_enricher, make_events
from meshagent.observer.convert import FlowBuilder
from meshagent.observer.pipeline import FlowPipeline
from meshagent.observer.ring import FlowRing
from meshagent.observer.server import ObserverServer, ServerConfig
from meshagent.observer.service import ObserverService
from meshagent.testing import gofollow
from meshagent.testing.benchtools import bench_line, median


def serve_node(sock: Path, name: str, flows: int) -> None:
    """Child process: one node's flow API holding `flows` flows, until SIGTERM."""
    pipeline = FlowPipeline(
        builder=FlowBuilder(enricher=make_enricher(200), node_name=name), ring=FlowRing(flows)
    )
    pipeline.on_events(make_events(flows, 200))
    server = ObserverServer(ObserverService(pipeline), ServerConfig(unix_socket=sock))
    server.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop(grace=None)


def start_node(sock: Path, name: str, flows: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-node", str(sock), name, str(flows)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"node {name} did not start")
    return process


def start_relay(sock: Path, nodes: list[Path]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "meshagent.cli.main", "relay", "--listen-socket", str(sock)]
    for i, node in enumerate(nodes):
        command += ["--peer", f"node-{i + 1}=unix://{node}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not sock.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the relay did not start")
        time.sleep(0.05)
    return process


def read_all(binary: Path, sock: Path, expected: int) -> float:
    """flows/s of one `getflows --number expected` (all of them), over the whole call: the client's own
    figure starts at the first response, which would hide the relay gathering every node's answer."""
    argv = gofollow.command(binary, "getflows", f"unix://{sock}", "--number", str(expected))
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result.get("status") != "OK" or int(result["flows"]) != expected:
        raise RuntimeError(f"reader: {result} (expected {expected} flows)")
    return expected / wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs (CI smoke)")
    p.add_argument("--flows", type=int, default=100_000, help="flows held by each node")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--serve-node", nargs=3, metavar=("SOCK", "NAME", "FLOWS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_node:
        serve_node(Path(args.serve_node[0]), args.serve_node[1], int(args.serve_node[2]))
        return 0
    flows = 10_000 if args.quick else args.flows
    rounds = 1 if args.quick else args.rounds
    try:
        binary = Path(gofollow.build())
    except Exception as err:
        print(f"# relay_throughput skipped: no Go client ({err})")
        return 0
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        directory = Path(tmp)
        node_socks = [directory / f"node-{i + 1}.sock" for i in range(3)]
        nodes = [start_node(sock, f"node-{i + 1}", flows) for i, sock in enumerate(node_socks)]
        try:
            direct = [read_all(binary, node_socks[0], flows) for _ in range(rounds)]
            base = median(direct)
            print(
                bench_line(
                    "relay.direct_one_node", {"flows_per_s": base, "min": min(direct), "max": max(direct)}
                )
            )
            for count in (1, 2, 3):
                relay_sock = directory / f"relay-{count}.sock"
                relay = start_relay(relay_sock, node_socks[:count])
                try:
                    rates = [read_all(binary, relay_sock, flows * count) for _ in range(rounds)]
                finally:
                    relay.terminate()
                    relay.wait(timeout=30)
                print(
                    bench_line(
                        f"relay.through_relay_{count}_nodes",
                        {"flows_per_s": median(rates), "min": min(rates), "max": max(rates)},
                        median(rates) / base,
                    ),
                    flush=True,
                )
        finally:
            for node in nodes:
                node.terminate()
                node.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
