"""Benchmark: the serving ceiling of a GetFlows stream, our gRPC server (h2server.py) against grpcio's
asyncio server (grpc.aio) handed pre-serialized responses, side by side in one run.

Both serve the same N flows (Hubble's API: one GetFlowsResponse per flow) over a Unix socket to the same
grpc-go client (bench/tools/flowfollow, `getflows --number N`). Ours runs the real path (the query over the
ring, encoding each flow, HTTP/2 framing); grpc.aio gets every response already encoded as bytes (identity
serializer), so it does strictly less work than it would in the agent. The server's CPU is this process's
CPU time over the transfer (the client is another process).

Why it matters: the agent must ingest and serve 100k flows/s without loss on two cores. If grpc.aio cannot
even stream 100k pre-made messages a second with a core to itself, it cannot replace our layer.

Run: .venv/bin/python bench/grpc_server_ceiling.py [--quick] [--flows N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_pipeline import build_agent, cpu_s, make_events
from meshagent.observer.convert import PreparedFlow
from meshagent.observer.pipeline import FlowPipeline
from meshagent.observer.server import ObserverServer, ServerConfig
from meshagent.observer.service import ObserverService
from meshagent.observer.wire import flow_response_bytes
from meshagent.testing import gofollow


def follow(binary: Path, sock: Path, n: int) -> dict[str, float]:
    """Runs the Go client for n flows; returns its result, with the server's CPU over the transfer."""
    argv = gofollow.command(binary, "getflows", f"unix://{sock}", "--number", str(n))
    c0, t0 = cpu_s(), time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    server_cpu = cpu_s() - c0
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result.get("status") != "OK":
        raise RuntimeError(f"follower: {result}")
    seconds = float(result["seconds"]) or wall
    return {
        "flows": int(result["flows"]),
        "flows_per_s": int(result["flows"]) / seconds,
        "server_cpu_share": server_cpu / wall,
    }


def serve_ours(pipeline: FlowPipeline, sock: Path, binary: Path, n: int) -> dict[str, float]:
    server = ObserverServer(ObserverService(pipeline), ServerConfig(unix_socket=sock))
    server.start()
    try:
        return follow(binary, sock, n)
    finally:
        server.stop(grace=None)


def serve_aio(responses: list[bytes], sock: Path, binary: Path, n: int) -> dict[str, float]:
    async def get_flows(_request: bytes, _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for r in responses:
            yield r

    handler = grpc.method_handlers_generic_handler(
        "observer.Observer",
        {
            "GetFlows": grpc.unary_stream_rpc_method_handler(
                get_flows, request_deserializer=None, response_serializer=None
            )
        },
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Future[None] | None = None

    async def run() -> None:
        nonlocal stop
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"unix:{sock}")
        await server.start()
        stop = loop.create_future()
        started.set()
        await stop
        await server.stop(None)

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    started.wait(30)
    try:
        return follow(binary, sock, n)
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(timeout=30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs (CI smoke)")
    p.add_argument("--flows", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=2, help="each server this many times, alternating")
    args = p.parse_args()
    n = 20_000 if args.quick else args.flows
    rounds = 1 if args.quick else args.rounds
    try:
        binary = Path(gofollow.build())
    except Exception as err:
        print(f"# grpc_server_ceiling skipped: no Go client ({err})")
        return 0
    pipeline = build_agent(n, 200, False)
    pipeline.on_events(make_events(n, 200))
    tail = ObserverService(pipeline).node_tail
    responses = [flow_response_bytes(e, tail) for e in pipeline.ring.snapshot() if type(e) is PreparedFlow]
    with tempfile.TemporaryDirectory(prefix="ma-ceiling-") as tmp:
        for i in range(rounds):
            ours = serve_ours(pipeline, Path(tmp) / f"ours{i}.sock", binary, n)
            aio = serve_aio(responses, Path(tmp) / f"aio{i}.sock", binary, n)
            for name, r in (("h2server", ours), ("grpc.aio-preserialized", aio)):
                print(
                    f"BENCH grpc_server_ceiling server={name} round={i} flows={r['flows']} "
                    f"flows_per_s={r['flows_per_s']:.0f} server_cpu_share={r['server_cpu_share']:.2f}",
                    flush=True,
                )
            print(
                f"BENCH grpc_server_ceiling round={i} ratio_h2server_over_aio="
                f"{ours['flows_per_s'] / aio['flows_per_s']:.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
