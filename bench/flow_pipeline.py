"""Benchmark: flows/s from the datapath through decoding, enrichment and the ring to a following gRPC
client, with loss counted, and the CPU share of the agent and of the follower.

Synthetic phases (the Python pipeline alone, fed DatapathEvent objects in this process):
  ingest        build + ring (+ metrics) with nobody reading: the ceiling of the ingest path.
  e2e           produce as fast as possible while a follower streams everything: rate delivered, loss
                counted (lost_events the server reported + anything unaccounted for), CPU share.
  paced         produce at a fixed rate (default 10k/s) with a follower: loss and CPU share.
e2e, paced and the kernel phases run once per --observer-modes entry (default both): flows served from
the agent's observer front process (observer=front, the agent's default) and from its own process
(observer=in-process), side by side in one run.

Kernel phases (root): a node namespace with two pods; the whole agent (`meshagent run`, a separate
process) enforces a NetworkPolicy that denies all egress of the `spray` pod, and bench/tools/udpspray.c
sends UDP datagrams with varying ports from it. Every datagram is denied in the pod's tc hook, and each
denial writes events into the BPF ring buffer (a POLICY_VERDICT and a DROP today; the benchmark measures
how many per packet first, in a calibration burst). A follower streams the agent's flows over its
observer socket.
  kernel-max    udpspray as fast as it goes (or at --kernel-rate) for --kernel-seconds.
  kernel-goal   the goal's rate, --goal-flows flows/s (default 100k), for --kernel-seconds: lost should be 0.
  kernel-paced  --paced-flows flows/s (default 10k) for --paced-seconds: the agent's CPU share at that rate.
  Paced phases send --X-flows / (events per packet) packets per second.

Loss accounting of a kernel phase: kernel_events (what the datapath emitted: events the agent ingested
+ events the kernel could not put in the ring buffer + events dropped before the flow ring) = delivered
(flows the follower got) + lost_reported (kernel ring-buffer losses + queue losses + flow-ring
overwrites the follower was told about) + unaccounted. The end of a run is one TCP SYN to port 65535
sent after the agent has drained the ring buffer; the follower stops at that flow, and the marker's own
events are left out of the figures. CPU shares are process CPU time (/proc/PID/stat, all threads) over
wall time: the agent's from the spray's start until it has drained; its observer front process's
(front_cpu_share; 0 with --no-observer-front-process) and the follower's until the follower has stopped.
machine_* are shares of the whole machine in cores (2 here) over the agent's window: idle,
softirq (where the tc programs run for a local sender; the kernel charges part of it to whichever
process it interrupted) and other (busy time none of our processes was charged with: softirq,
and anything else running on the machine, which makes every figure of that phase suspect).

The follower is the Go one (meshagent.testing.gofollow) when it can be built, else the Python one in
this file (`--follower-kind` chooses); each line names it (follower=go|python).

Run: .venv/bin/python bench/flow_pipeline.py [--quick] [--synthetic-only | --kernel-only]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

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
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
        pipeline.add_batch_sink(m.observe_prepared)  # as the agent wires it
        pipeline.add_lost_listener(m.lost)
    return pipeline


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def proc_cpu_s(pid: int) -> float:
    """CPU time (user + system, all threads) of a running process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def children_cpu_s(pid: int) -> float:
    """CPU time of a process's running children (the agent's observer front process)."""
    total = 0.0
    for tasks in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in tasks.read_text().split():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # exited meanwhile
                total += proc_cpu_s(int(child))
    return total


def machine_cpu_s() -> dict[str, float]:
    """CPU seconds of the whole machine by state, summed over CPUs (/proc/stat)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    values = Path("/proc/stat").read_text().splitlines()[0].split()[1 : 1 + len(names)]
    return {name: int(v) / CLK_TCK for name, v in zip(names, values, strict=True)}


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


# --- followers ------------------------------------------------------------------------------------------


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


def choose_follower(kind: str) -> tuple[str, Path | None]:
    """("go", binary) when the Go follower is wanted and can be built, else ("python", None)."""
    if kind == "python":
        return "python", None
    try:
        from meshagent.testing import gofollow
    except ImportError as err:
        if kind == "go":
            raise SystemExit(f"--follower-kind go: {err}") from err
        note("Go follower not available (meshagent.testing.gofollow missing): using the Python follower")
        return "python", None
    try:
        return "go", Path(gofollow.build())
    except Exception as err:  # GoFollowerUnavailable, or a build that failed some other way
        if kind == "go":
            raise SystemExit(f"--follower-kind go: {err}") from err
        note(f"Go follower not available ({type(err).__name__}: {err}): using the Python follower")
        return "python", None


@dataclass(frozen=True)
class FollowerKind:
    name: str  # go | python
    binary: Path | None

    def argv(self, sock: Path) -> list[str]:
        if self.binary is not None:
            from meshagent.testing import gofollow

            return gofollow.command(
                self.binary, "getflows", f"unix://{sock}", "--follow", "--stop-at-dport", str(END_PORT)
            )
        return [sys.executable, __file__, "--follower", str(sock)]


@dataclass
class FollowerResult:
    flows: int
    lost: int
    seconds: float
    cpu_s: float  # the whole process's CPU time
    exited_at: float  # time.perf_counter() when it was seen to exit


class Follower:
    """A following client in a child process: prints `ready`, then one JSON line when it saw the marker."""

    def __init__(self, kind: FollowerKind, sock: Path) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(kind.argv(sock), stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.kill()
            raise RuntimeError(f"{kind.name} follower did not start (said {line.strip()!r})")
        time.sleep(0.5)  # its GetFlows stream is open on the server by now

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def finish(
        self, timeout: float, *, nudge: Callable[[], None] | None = None, nudge_every: float = 5.0
    ) -> FollowerResult:
        """Waits for the follower to exit (calling `nudge` every `nudge_every` s meanwhile: a marker may
        be lost), then reads its result; the CPU time comes from its exit status (wait4)."""
        deadline = time.perf_counter() + timeout
        next_nudge = time.perf_counter() + nudge_every
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            now = time.perf_counter()
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if now > deadline:
                self.kill()
                raise RuntimeError(f"{self.kind.name} follower did not stop within {timeout:.0f} s")
            if nudge is not None and now > next_nudge:
                nudge()
                next_nudge = now + nudge_every
            time.sleep(0.01)
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        lines = out.strip().splitlines()
        if self.proc.returncode != 0 or not lines:
            raise RuntimeError(f"{self.kind.name} follower failed (exit {self.proc.returncode}): {out!r}")
        data = json.loads(lines[-1])
        if data.get("end", "stop-dport") != "stop-dport" or data.get("status", "OK") != "OK":
            raise RuntimeError(f"{self.kind.name} follower ended without the marker: {data}")
        return FollowerResult(
            flows=int(data["flows"]),
            lost=int(data.get("lost", 0)),
            seconds=float(data.get("seconds", 0.0)),
            cpu_s=usage.ru_utime + usage.ru_stime,
            exited_at=now,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- synthetic phases -------------------------------------------------------------------------------------

READER_BATCH = 1000  # events handed over at once, as the agent's ring-buffer reader does (one drain)


def phase_ingest(events: list[DatapathEvent], args: argparse.Namespace, tmp: Path) -> None:
    pipeline = build_agent(args.ring, args.pods, not args.no_metrics)
    c0, t0 = cpu_s(), time.perf_counter()
    for i in range(0, len(events), READER_BATCH):
        pipeline.on_events(events[i : i + READER_BATCH])
    dt, dc = time.perf_counter() - t0, cpu_s() - c0
    print(
        f"BENCH flow_pipeline phase=ingest events={len(events)} flows_per_s={len(events) / dt:.0f} "
        f"cpu_share={dc / dt:.2f}",
        flush=True,
    )


def front_cpu_s(server: ObserverServer) -> float:
    """CPU time of the server's front process (0 when it serves from this process)."""
    pid = server.front.pid if server.front is not None else None
    return proc_cpu_s(pid) if pid is not None else 0.0


def start_server(pipeline: FlowPipeline, sock: Path, mode: str) -> ObserverServer:
    config = ServerConfig(unix_socket=sock, front_process=mode == "front")
    server = ObserverServer(ObserverService(pipeline), config)
    server.start()
    return server


def phase_e2e(events: list[DatapathEvent], args: argparse.Namespace, tmp: Path, mode: str) -> None:
    pipeline = build_agent(args.ring, args.pods, not args.no_metrics)
    server = start_server(pipeline, tmp / "e2e.sock", mode)
    try:
        follow = Follower(args.follower_kind, tmp / "e2e.sock")
        try:
            f0 = follow.cpu_s()
            c0, t0, fc0 = cpu_s(), time.perf_counter(), front_cpu_s(server)
            for i in range(0, len(events), READER_BATCH):
                pipeline.on_events(events[i : i + READER_BATCH])
            produce_s = time.perf_counter() - t0
            pipeline.on_event(end_marker())
            res = follow.finish(300)
            dt, dc, dfc = time.perf_counter() - t0, cpu_s() - c0, front_cpu_s(server) - fc0
        finally:
            follow.kill()
    finally:
        server.stop(grace=None)
    sent = len(events) + 1
    unaccounted = sent - res.flows - res.lost
    print(
        f"BENCH flow_pipeline phase=e2e observer={mode} follower={follow.kind.name} events={sent} "
        f"produce_per_s={sent / produce_s:.0f} delivered_per_s={res.flows / dt:.0f} delivered={res.flows} "
        f"lost_reported={res.lost} unaccounted={unaccounted} agent_cpu_share={dc / dt:.2f} "
        f"front_cpu_share={dfc / dt:.2f} follower_cpu_share={(res.cpu_s - f0) / dt:.2f} ring={args.ring}",
        flush=True,
    )


def phase_paced(events: list[DatapathEvent], args: argparse.Namespace, tmp: Path, mode: str) -> None:
    pipeline = build_agent(args.ring, args.pods, not args.no_metrics)
    server = start_server(pipeline, tmp / "paced.sock", mode)
    try:
        follow = Follower(args.follower_kind, tmp / "paced.sock")
        try:
            rate = args.rate
            batch = max(1, rate // 100)  # the datapath reader drains every ~10 ms
            total = min(len(events), int(rate * args.seconds))
            f0 = follow.cpu_s()
            c0, t0, fc0 = cpu_s(), time.perf_counter(), front_cpu_s(server)
            i = 0
            while i < total:
                pipeline.on_events(events[i : i + batch])
                i += batch
                due = t0 + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            dt, dc = time.perf_counter() - t0, cpu_s() - c0
            pipeline.on_event(end_marker())
            res = follow.finish(300)
            follower_share = (res.cpu_s - f0) / (res.exited_at - t0)
            front_share = (front_cpu_s(server) - fc0) / (res.exited_at - t0)
        finally:
            follow.kill()
    finally:
        server.stop(grace=None)
    sent = total + 1
    print(
        f"BENCH flow_pipeline phase=paced observer={mode} follower={follow.kind.name} target_per_s={rate} "
        f"achieved_per_s={total / dt:.0f} delivered={res.flows} lost_reported={res.lost} "
        f"unaccounted={sent - res.flows - res.lost} agent_cpu_share={dc / dt:.2f} "
        f"front_cpu_share={front_share:.2f} "
        f"follower_cpu_share={follower_share:.2f}",
        flush=True,
    )


def synthetic_phases(args: argparse.Namespace) -> None:
    events = make_events(max(args.events, int(args.rate * args.seconds)), args.pods)
    with tempfile.TemporaryDirectory(prefix="flowbench-") as tmp:
        phase_ingest(events[: args.events], args, Path(tmp))
        for mode in args.observer_modes.split(","):
            phase_e2e(events[: args.events], args, Path(tmp), mode)
            phase_paced(events, args, Path(tmp), mode)


# --- kernel phases ----------------------------------------------------------------------------------------

NODE = "bench-node"
SPRAY_IP, SINK_IP = IPv4Address("10.244.7.10"), IPv4Address("10.244.7.20")

MANIFESTS = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: bench}}
---
apiVersion: v1
kind: Pod
metadata: {{name: spray, namespace: bench, labels: {{app: spray}}}}
spec: {{nodeName: {NODE}, containers: [{{name: main, image: bench}}]}}
status: {{podIP: "{SPRAY_IP}"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sink, namespace: bench, labels: {{app: sink}}}}
spec: {{nodeName: {NODE}, containers: [{{name: main, image: bench}}]}}
status: {{podIP: "{SINK_IP}"}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: spray-no-egress, namespace: bench}}
spec: {{podSelector: {{matchLabels: {{app: spray}}}}, policyTypes: [Egress]}}
"""


@dataclass(frozen=True)
class Counters:
    """One reading of everything a kernel phase compares, taken from outside the agent."""

    at: float  # time.perf_counter()
    seen: int  # events the agent's pipeline ingested (ServerStatus.seen_flows)
    # events the kernel did not deliver: not put in the ring buffer (pinned ma_events_lost), or suppressed
    # by an endpoint's event budget (pinned ma_event_budget)
    kernel_lost: int
    kernel_lost_told: int  # of those, what the agent has recorded so far (ServerStatus, polled each second)
    queue_lost: int  # events dropped between the reader and the flow ring (ServerStatus)
    ring_lost: int  # flows overwritten before a follower read them (ServerStatus.lost_events_followers)
    drops: int  # packets the datapath dropped, any reason (pinned ma_metrics)
    agent_cpu: float
    front_cpu: float  # the agent's observer front process (children_cpu_s)
    machine: dict[str, float]  # machine_cpu_s()

    @property
    def events(self) -> int:
        return self.seen + self.kernel_lost + self.queue_lost


@dataclass
class KernelRig:
    """The running set-up of the kernel phases: topology, agent, and how to read their counters."""

    tool: Path
    spray_argv: list[str]  # `ip netns exec <spray pod> udpspray SINK_IP`
    agent: subprocess.Popen[bytes]
    sock: Path
    maps_dir: Path
    health_port: int
    events_per_packet: float = 0.0
    _client: Any = None
    _lost_map: Any = None
    _budget_map: Any = None
    _metrics_map: Any = None
    _fds: list[int] = field(default_factory=list)

    def open(self) -> None:
        from meshagent.datapath.maps import event_budget, events_lost, metrics
        from meshagent.datapath.maps.base import PerCpuArray, TypedMap
        from meshagent.datapath.pinned import open_pinned
        from meshagent.observer.client import ObserverClient

        self._client = ObserverClient(str(self.sock))
        lost_fd = open_pinned(self.maps_dir / events_lost.MAP_NAME)
        metrics_fd = open_pinned(self.maps_dir / metrics.MAP_NAME)
        budget_fd = open_pinned(self.maps_dir / event_budget.MAP_NAME)
        self._fds += [lost_fd, metrics_fd, budget_fd]
        self._budget_map = TypedMap(
            name=event_budget.MAP_NAME,
            fd=budget_fd,
            key_type=event_budget.BudgetKey,
            value_type=event_budget.BudgetValue,
            capacity=0,
        )
        self._lost_map = PerCpuArray(
            name=events_lost.MAP_NAME, fd=lost_fd, value_type=events_lost.LostValue, capacity=1
        )
        self._metrics_map = PerCpuArray(
            name=metrics.MAP_NAME,
            fd=metrics_fd,
            value_type=metrics.MetricsValue,
            capacity=metrics.REASONS * 2,
        )
        self._metrics_indexes = [
            index for reason, _direction, index in metrics.known_indexes() if reason != DropReason.NONE
        ]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def counters(self) -> Counters:
        status = self._client.server_status()
        kernel_lost = sum(v.count for v in self._lost_map.read(0))
        kernel_lost += sum(v.suppressed for _k, v in self._budget_map.items())
        drops = sum(v.packets for index in self._metrics_indexes for v in self._metrics_map.read(index))
        return Counters(
            at=time.perf_counter(),
            seen=int(status.seen_flows),
            kernel_lost=int(kernel_lost),
            kernel_lost_told=int(status.lost_events_datapath),
            queue_lost=int(getattr(status, "lost_events_queue", 0)),
            ring_lost=int(getattr(status, "lost_events_followers", 0)),
            drops=int(drops),
            agent_cpu=proc_cpu_s(self.agent.pid),
            front_cpu=children_cpu_s(self.agent.pid),
            machine=machine_cpu_s(),
        )

    def drained(self, *, quiet_s: float = 0.15, timeout: float = 60.0) -> Counters:
        """Waits until the agent has taken in everything the kernel produced (its counts stop moving for
        `quiet_s`) and has recorded every kernel loss, so that none of this phase's reaches the next
        phase's follower; returns the reading from the moment they stopped."""
        deadline = time.perf_counter() + timeout
        last = self.counters()
        while True:
            time.sleep(0.05)
            now = self.counters()
            if (now.seen, now.kernel_lost, now.queue_lost) != (last.seen, last.kernel_lost, last.queue_lost):
                last = now
            elif now.at - last.at >= quiet_s and now.kernel_lost_told >= now.kernel_lost:
                return last
            if now.at > deadline:
                raise RuntimeError("the agent did not drain the ring buffer in time")

    def spray(self, *extra: str, timeout: float = 120.0) -> dict[str, Any]:
        result = subprocess.run(
            [*self.spray_argv, *extra], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"udpspray {' '.join(extra)} failed: {result.stderr.strip()}")
        data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return data

    def marker(self) -> None:
        self.spray("--tcp-syn", str(END_PORT), timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as answer:
            return bool(json.loads(answer.read()).get("ready"))
    except OSError:
        return False


def calibrate(rig: KernelRig, packets: int) -> None:
    """Events per denied packet, measured: a slow burst, nothing else running."""
    before = rig.drained()
    rig.spray("--count", str(packets), "--rate", "5000")
    after = rig.drained()
    drops = after.drops - before.drops
    events = after.events - before.events
    if drops <= 0 or events <= 0:
        raise RuntimeError(f"calibration: {packets} packets sent, {drops} dropped, {events} events")
    rig.events_per_packet = events / drops
    print(
        f"BENCH flow_pipeline phase=kernel-calibrate packets_sent={packets} datapath_drops={drops} "
        f"kernel_events={events} events_per_packet={rig.events_per_packet:.3f} "
        f"kernel_lost={after.kernel_lost - before.kernel_lost}",
        flush=True,
    )


def kernel_phase(
    rig: KernelRig, args: argparse.Namespace, name: str, pps: int, seconds: float, mode: str
) -> None:
    follow = Follower(args.follower_kind, rig.sock)
    markers = 0

    def send_marker() -> None:
        nonlocal markers
        rig.marker()
        markers += 1

    try:
        f0 = follow.cpu_s()
        before = rig.counters()
        sent = rig.spray("--rate", str(pps), "--seconds", str(seconds), timeout=seconds + 60)
        spray_end = time.perf_counter()
        drained = rig.drained()
        f_drained = follow.cpu_s()
        send_marker()
        res = follow.finish(120 + seconds, nudge=send_marker, nudge_every=5.0)
        front_done = children_cpu_s(rig.agent.pid)
    finally:
        follow.kill()
    after = rig.drained()

    epp = rig.events_per_packet
    marker_events = round(markers * epp)
    kernel_events = after.events - before.events - marker_events
    drops = after.drops - before.drops - markers
    delivered = res.flows - 1  # the first marker flow stopped it
    lost_kernel = after.kernel_lost - before.kernel_lost
    lost_queue = after.queue_lost - before.queue_lost
    lost_ring = after.ring_lost - before.ring_lost
    lost = lost_kernel + lost_queue + lost_ring
    window = res.exited_at - before.at  # from the spray's start to the last flow at the follower
    spray_s = float(sent["seconds"])
    agent_s = drained.at - before.at
    machine = {k: (drained.machine[k] - before.machine[k]) / agent_s for k in before.machine}
    busy = sum(v for k, v in machine.items() if k not in ("idle", "iowait", "steal"))
    agent_share = (drained.agent_cpu - before.agent_cpu) / agent_s
    # The front process works until the follower has everything: its share is over that window.
    front_share = (front_done - before.front_cpu) / window
    front_in_agent_window = (drained.front_cpu - before.front_cpu) / agent_s
    # Busy CPU no process of ours was charged with: softirq work, other processes on the machine.
    other = (
        busy - agent_share - front_in_agent_window - (f_drained - f0 + float(sent["cpu_seconds"])) / agent_s
    )
    print(
        f"BENCH flow_pipeline phase={name} observer={mode} cpu_hogs={args.cpu_hogs} "
        f"follower={follow.kind.name} target_pps={pps} "
        f"packets_sent={sent['sent']} sent_pps={sent['sent'] / spray_s:.0f} datapath_drops={drops} "
        f"kernel_events={kernel_events} kernel_events_per_s={kernel_events / spray_s:.0f} "
        f"delivered={delivered} delivered_per_s={delivered / window:.0f} lost_reported={lost} "
        f"lost_kernel={lost_kernel} lost_queue={lost_queue} lost_ring={lost_ring} "
        f"follower_lost_seen={res.lost} unaccounted={kernel_events - delivered - lost} "
        f"agent_cpu_share={agent_share:.2f} front_cpu_share={front_share:.2f} "
        f"follower_cpu_share={(res.cpu_s - f0) / window:.2f} "
        f"sender_cpu_share={float(sent['cpu_seconds']) / spray_s:.2f} "
        f"machine_idle={machine['idle']:.2f} machine_softirq={machine['softirq']:.2f} "
        f"machine_other={other:.2f} "
        f"spray_s={spray_s:.2f} drain_s={drained.at - spray_end:.2f} deliver_s={window:.2f} "
        f"markers={markers}",
        flush=True,
    )


def kernel_phases(args: argparse.Namespace) -> None:
    for mode in args.observer_modes.split(","):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.cpu_hogs)]
        try:
            kernel_phases_with(args, mode)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()


def kernel_phases_with(args: argparse.Namespace, mode: str) -> None:
    """The kernel phases against one agent, serving flows from its front process (mode "front") or from
    its own process (mode "in-process")."""
    from meshagent.testing.benchtools import build_udpspray
    from meshagent.testing.topology import Topology

    tool = build_udpspray()
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-flowbench-{uuid.uuid4().hex[:8]}"
    health_port = free_port()
    agent: subprocess.Popen[bytes] | None = None
    rig: KernelRig | None = None
    with Topology() as topo, tempfile.TemporaryDirectory(prefix="flowbench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            # No IPv6 anywhere: its neighbour and listener chatter would add events of its own.
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    topo.node,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
                check=True,
            )
            # IPv4-only pods (the node has IPv6 off): the figures count every flow event exactly.
            spray = topo.add_pod("spray", SPRAY_IP, ipv6=False)
            topo.add_pod("sink", SINK_IP, ipv6=False)
            for pod in topo.pods.values():
                pod.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", check=True)
            (tmp / "manifests").mkdir()
            (tmp / "manifests" / "bench.yaml").write_text(MANIFESTS)
            command = [
                sys.executable, "-m", "meshagent.cli.main", "run",
                "--manifests", str(tmp / "manifests"),
                "--node", NODE,
                "--node-netns", topo.node,
                "--pin-dir", str(pin_dir),
                "--observer-socket", str(tmp / "observer.sock"),
                "--metrics-listen", "127.0.0.1:0",
                "--health-listen", f"127.0.0.1:{health_port}",
                "--flow-ring-size", str(args.ring),
                "--cleanup",
                "--log-level", "warning",
            ]  # fmt: skip
            if mode == "in-process":
                command.append("--no-observer-front-process")
            with (tmp / "agent.log").open("wb") as log:
                agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            started = time.monotonic()
            while not agent_ready(health_port):
                if agent.poll() is not None or time.monotonic() - started > 120:
                    raise RuntimeError("the agent did not become ready")
                time.sleep(0.1)
            note(f"agent ready in {time.monotonic() - started:.1f} s (observer: {mode})")
            rig = KernelRig(
                tool=tool,
                spray_argv=spray.argv(str(tool), str(SINK_IP)),
                agent=agent,
                sock=tmp / "observer.sock",
                maps_dir=next(pin_dir.glob("*/ma_metrics")).parent,
                health_port=health_port,
            )
            rig.open()
            calibrate(rig, 1000 if args.quick else 5000)
            kernel_phase(rig, args, "kernel-max", args.kernel_rate, args.kernel_seconds, mode)
            if args.goal_flows:
                pps = max(1, round(args.goal_flows / rig.events_per_packet))
                kernel_phase(rig, args, "kernel-goal", pps, args.kernel_seconds, mode)
            pps = max(1, round(args.paced_flows / rig.events_per_packet))
            kernel_phase(rig, args, "kernel-paced", pps, args.paced_seconds, mode)
        except Exception:
            if (tmp / "agent.log").exists():
                note("agent log tail:\n" + (tmp / "agent.log").read_text()[-3000:])
            raise
        finally:
            if rig is not None:
                rig.close()
            if agent is not None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
            shutil.rmtree(pin_dir, ignore_errors=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that clean up


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--follower", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="short runs (CI smoke, < 1 min)")
    p.add_argument("--follower-kind", choices=("auto", "go", "python"), default="auto")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--synthetic-only", action="store_true", help="skip the kernel phases")
    which.add_argument("--kernel-only", action="store_true", help="skip the synthetic phases")
    p.add_argument("--events", type=int, default=200_000, help="synthetic: events per phase")
    p.add_argument("--ring", type=int, default=65_536, help="flow ring capacity")
    p.add_argument("--pods", type=int, default=200, help="synthetic: pods in the enricher")
    p.add_argument("--rate", type=int, default=10_000, help="synthetic paced phase: flows per second")
    p.add_argument("--seconds", type=float, default=5.0, help="synthetic paced phase: duration")
    p.add_argument("--no-metrics", action="store_true", help="synthetic: no Prometheus event sink")
    p.add_argument("--kernel-rate", type=int, default=0, help="kernel-max: packets/s (0: as fast as it goes)")
    p.add_argument(
        "--observer-modes",
        default="front,in-process",
        help="serving phases (e2e, paced, kernel-*): run them once per mode, comma-separated: front (the "
        "agent's observer front process, its default) and in-process (--no-observer-front-process)",
    )
    p.add_argument(
        "--cpu-hogs",
        type=int,
        default=0,
        help="kernel phases: run this many busy-looping processes alongside (a noisy neighbour on the node)",
    )
    p.add_argument("--kernel-seconds", type=float, default=8.0, help="kernel-max and kernel-goal: duration")
    p.add_argument(
        "--goal-flows", type=int, default=100_000, help="kernel-goal: flows (events) per second (0: skip)"
    )
    p.add_argument("--paced-flows", type=int, default=10_000, help="kernel-paced: flows (events) per second")
    p.add_argument("--paced-seconds", type=float, default=10.0, help="kernel-paced: duration")
    args = p.parse_args()
    # Clean up on Ctrl-C and SIGTERM alike, also when started in the background (SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if args.follower:
        follower(args.follower)
        return 0
    if args.quick:
        args.events, args.seconds = 30_000, 2.0
        args.kernel_seconds, args.paced_seconds = 3.0, 3.0
    kind, binary = choose_follower(args.follower_kind)
    args.follower_kind = FollowerKind(kind, binary)
    if not args.kernel_only:
        synthetic_phases(args)
    if not args.synthetic_only:
        if os.geteuid() != 0:
            note("kernel phases skipped: they need root (BPF, network namespaces)")
        else:
            kernel_phases(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
