"""Benchmark: flows/s from DatapathEvent objects through enrichment and the ring to a following gRPC client.

Phases (each prints a `BENCH flow_pipeline ...` line):
  ingest   build + ring (+ metrics) with nobody reading: the ceiling of the ingest path.
  e2e      produce as fast as possible while a follower (a separate process, over the Unix socket, using
           the generated Hubble-style stubs) streams everything: rate delivered, loss counted (lost_events
           the server reported + anything unaccounted for), the agent process's CPU share.
  paced    produce at a fixed rate (default 10k/s) with a follower: loss and the agent's CPU share.

The events are synthetic (the kernel path is measured by the datapath's own benchmark); everything after
the ring-buffer decode is the real code. Run: .venv/bin/python bench/flow_pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import IDENTITY_WORLD, Direction, Verdict
from meshagent.observer.convert import FlowBuilder
from meshagent.observer.enrich import EndpointInfo, PolicyRef, ServiceRef, StaticEnricher, WorkloadRef
from meshagent.observer.metrics import FlowMetrics
from meshagent.observer.pipeline import FlowPipeline
from meshagent.observer.ring import FlowRing
from meshagent.observer.server import ObserverServer, ServerConfig
from meshagent.observer.service import ObserverService

END_PORT = 65535  # destination port of the marker event that tells the follower to stop


def make_enricher(pods: int) -> StaticEnricher:
    e = StaticEnricher()
    for i in range(pods):
        ip = IPv4Address(f"10.1.{i // 250}.{i % 250 + 1}")
        e.endpoints[ip] = EndpointInfo(
            1000 + i,
            f"ns-{i % 5}",
            f"app-{i}-7d9f",
            (f"k8s:app=app-{i}", "k8s:tier=web"),
            (WorkloadRef(f"app-{i}", "Deployment"),),
        )
    e.rules[1] = (PolicyRef("NetworkPolicy", "ns-0", "allow-web"),)
    e.services[(IPv4Address("10.96.0.10"), 80, 6)] = ServiceRef("ns-0", "web")
    return e


def make_events(n: int, pods: int) -> list[DatapathEvent]:
    """Many connections between `pods` pods and a few outside peers; mostly allowed, some drops."""
    out = []
    t0 = time.monotonic_ns()
    for i in range(n):
        src = IPv4Address(f"10.1.{(i % pods) // 250}.{(i % pods) % 250 + 1}")
        j = (i * 7 + 3) % pods
        dst = IPv4Address(f"10.1.{j // 250}.{j % 250 + 1}") if i % 10 else IPv4Address("198.51.100.9")
        drop = i % 20 == 0
        out.append(
            DatapathEvent(
                timestamp_ns=t0 + i * 1000,
                type=EventType.DROP if drop else EventType.POLICY_VERDICT,
                verdict=Verdict.DENIED if drop else Verdict.ALLOWED,
                drop_reason=DropReason.POLICY_DEFAULT_DENY if drop else DropReason.NONE,
                direction=Direction(i % 2),
                endpoint_id=i % pods + 1,
                ifindex=10 + i % pods,
                saddr=src,
                daddr=dst,
                sport=32768 + i % 28000,
                dport=80 if i % 3 else 443,
                protocol=6 if i % 4 else 17,
                tcp_flags=0x02,
                is_reply=False,
                rule_id=0 if drop else 1,
                src_identity=1000 + i % pods,
                dst_identity=1000 + j if i % 10 else IDENTITY_WORLD,
            )
        )
    return out


def end_marker() -> DatapathEvent:
    return DatapathEvent(
        timestamp_ns=time.monotonic_ns(),
        type=EventType.POLICY_VERDICT,
        verdict=Verdict.ALLOWED,
        drop_reason=DropReason.NONE,
        direction=Direction.EGRESS,
        endpoint_id=1,
        ifindex=1,
        saddr=IPv4Address("10.1.0.1"),
        daddr=IPv4Address("10.1.0.2"),
        sport=1,
        dport=END_PORT,
        protocol=6,
        tcp_flags=2,
        is_reply=False,
        rule_id=0,
        src_identity=1000,
        dst_identity=1001,
    )


def build_agent(capacity: int, pods: int, metrics: bool) -> FlowPipeline:
    pipeline = FlowPipeline(
        builder=FlowBuilder(enricher=make_enricher(pods), node_name="bench-node"), ring=FlowRing(capacity)
    )
    if metrics:
        m = FlowMetrics(node_name="bench-node", version="bench")
        pipeline.add_event_sink(m.observe_event)
        pipeline.add_lost_listener(m.lost)
    return pipeline


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def follower(sock: str) -> None:
    """Runs in a child process: follow everything, count flows and reported losses, stop at the marker."""
    import grpc
    from meshagent.observer.proto.observer import observer_pb2 as opb
    from meshagent.observer.proto.observer import observer_pb2_grpc as ogrpc

    flows = lost = 0
    first = last = 0.0
    with grpc.insecure_channel(f"unix://{sock}") as ch:
        stub = ogrpc.ObserverStub(ch)
        print("ready", flush=True)
        for r in stub.GetFlows(opb.GetFlowsRequest(follow=True), timeout=600):
            which = r.WhichOneof("response_types")
            if which == "flow":
                if not flows:
                    first = time.monotonic()
                flows += 1
                last = time.monotonic()
                if r.flow.l4.TCP.destination_port == END_PORT:
                    break
            elif which == "lost_events":
                lost += r.lost_events.num_events_lost
    print(json.dumps({"flows": flows, "lost": lost, "seconds": last - first}), flush=True)


def start_follower(sock: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--follower", str(sock)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)  # the GetFlows stream is open on the server
    return proc


def finish_follower(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate(timeout=300)
    return dict(json.loads(out.strip().splitlines()[-1]))


def phase_ingest(events: list[DatapathEvent], args: argparse.Namespace, tmp: Path) -> None:
    pipeline = build_agent(args.ring, args.pods, not args.no_metrics)
    c0, t0 = cpu_s(), time.perf_counter()
    for ev in events:
        pipeline.on_event(ev)
    dt, dc = time.perf_counter() - t0, cpu_s() - c0
    print(
        f"BENCH flow_pipeline phase=ingest events={len(events)} flows_per_s={len(events) / dt:.0f} "
        f"cpu_share={dc / dt:.2f}",
        flush=True,
    )


def phase_e2e(events: list[DatapathEvent], args: argparse.Namespace, tmp: Path) -> None:
    pipeline = build_agent(args.ring, args.pods, not args.no_metrics)
    server = ObserverServer(ObserverService(pipeline), ServerConfig(unix_socket=tmp / "e2e.sock"))
    server.start()
    try:
        proc = start_follower(tmp / "e2e.sock")
        c0, t0 = cpu_s(), time.perf_counter()
        for ev in events:
            pipeline.on_event(ev)
        produce_s = time.perf_counter() - t0
        pipeline.on_event(end_marker())
        res = finish_follower(proc)
        dt, dc = time.perf_counter() - t0, cpu_s() - c0
    finally:
        server.stop(grace=None)
    sent = len(events) + 1
    unaccounted = sent - res["flows"] - res["lost"]
    print(
        f"BENCH flow_pipeline phase=e2e events={sent} produce_per_s={sent / produce_s:.0f} "
        f"delivered_per_s={res['flows'] / dt:.0f} delivered={res['flows']:.0f} "
        f"lost_reported={res['lost']:.0f} "
        f"unaccounted={unaccounted:.0f} agent_cpu_share={dc / dt:.2f} ring={args.ring}",
        flush=True,
    )


def phase_paced(events: list[DatapathEvent], args: argparse.Namespace, tmp: Path) -> None:
    pipeline = build_agent(args.ring, args.pods, not args.no_metrics)
    server = ObserverServer(ObserverService(pipeline), ServerConfig(unix_socket=tmp / "paced.sock"))
    server.start()
    try:
        proc = start_follower(tmp / "paced.sock")
        rate = args.rate
        batch = max(1, rate // 100)  # the datapath reader drains every ~10 ms
        total = min(len(events), int(rate * args.seconds))
        c0, t0 = cpu_s(), time.perf_counter()
        i = 0
        while i < total:
            for ev in events[i : i + batch]:
                pipeline.on_event(ev)
            i += batch
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        dt, dc = time.perf_counter() - t0, cpu_s() - c0
        pipeline.on_event(end_marker())
        res = finish_follower(proc)
    finally:
        server.stop(grace=None)
    sent = total + 1
    print(
        f"BENCH flow_pipeline phase=paced target_per_s={rate} achieved_per_s={total / dt:.0f} "
        f"delivered={res['flows']:.0f} lost_reported={res['lost']:.0f} "
        f"unaccounted={sent - res['flows'] - res['lost']:.0f} agent_cpu_share={dc / dt:.2f}",
        flush=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--follower", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="fewer events (CI smoke run)")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--ring", type=int, default=65_536, help="flow ring capacity")
    p.add_argument("--pods", type=int, default=200)
    p.add_argument("--rate", type=int, default=10_000, help="paced phase: flows per second")
    p.add_argument("--seconds", type=float, default=5.0, help="paced phase: duration")
    p.add_argument("--no-metrics", action="store_true")
    args = p.parse_args()
    if args.follower:
        follower(args.follower)
        return 0
    if args.quick:
        args.events, args.seconds = 30_000, 2.0
    events = make_events(max(args.events, int(args.rate * args.seconds)), args.pods)
    with tempfile.TemporaryDirectory(prefix="flowbench-") as tmp:
        phase_ingest(events[: args.events], args, Path(tmp))
        phase_e2e(events[: args.events], args, Path(tmp))
        phase_paced(events, args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
