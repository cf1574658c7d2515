"""Chaos soak: the agent (`meshagent run`, its own process) on a cluster in a box fed by the API emulator,
while pods, labels, namespaces and policies churn, the agent is killed with SIGKILL (also in the middle of
a change) and the API server goes away and comes back with its history compacted (410 Gone).

After every change the connectivity matrix (every pod to every other, TCP) is probed with real packets
until it equals what the policy evaluator says of the desired state. What the soak reports, as BENCH
lines: cells still wrong when a change's convergence deadline passed (goal 0), the longest time from a
change to a correct kernel, allowed established connections broken by a restart (goal 0), agent exits
nobody asked for (goal 0), and the agent's RSS, open descriptors and threads over time.

    python -m tests.soak.driver --minutes 10 [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from meshagent.model.kernel_state import Protocol, Verdict
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.evaluate import Peer
from meshagent.policy.ingest import PolicyIngest
from meshagent.policy.trace import trace
from meshagent.testing.topology import Pod, Topology

from tests.sources.k8s_emulator import KubeEmulator

NODE = "soak-node"
NAMESPACES = ("alpha", "beta", "gamma")
APPS = ("web", "api", "db")
TEAMS = ("red", "blue")
PORT = 80
PROBER = Path(__file__).resolve().parents[1] / "policy" / "prober.py"
CONVERGENCE_DEADLINE_S = 30.0
WARMUP_S = 15.0  # of each agent run, before its footprint counts towards growth
MIN_RUN_SPAN_S = 20.0
FLOW_RING_SIZE = 4096  # sampled time after warm-up for a run's growth to count


def namespace_obj(name: str, team: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": team}}}


def pod_obj(
    namespace: str, name: str, ip: IPv4Address, app: str, ipv6: IPv6Address | None = None
) -> dict[str, Any]:
    """A Running pod; a dual-stack one lists both its addresses in status.podIPs, as the API server does."""
    addresses = [str(ip), *([str(ipv6)] if ipv6 is not None else [])]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "app"}]},
        "status": {"podIP": str(ip), "podIPs": [{"ip": a} for a in addresses], "phase": "Running"},
    }


def random_policy(rng: random.Random, namespace: str, name: str) -> dict[str, Any]:
    """A NetworkPolicy from a small vocabulary that still covers isolation both ways, pod and namespace
    selectors, and ports that match or not."""
    target = {"matchLabels": {"app": rng.choice(APPS)}} if rng.random() < 0.8 else {}
    peer: dict[str, Any] = rng.choice(
        [
            {"podSelector": {"matchLabels": {"app": rng.choice(APPS)}}},
            {"namespaceSelector": {"matchLabels": {"team": rng.choice(TEAMS)}}},
            {
                "namespaceSelector": {"matchLabels": {"team": rng.choice(TEAMS)}},
                "podSelector": {"matchLabels": {"app": rng.choice(APPS)}},
            },
        ]
    )
    ports = rng.choice([[{"port": PORT}], [{"port": PORT + 1}], []])
    rule: dict[str, Any] = {"ports": ports} if ports else {}
    spec: dict[str, Any] = {"podSelector": target}
    kind = rng.choice(["ingress", "ingress", "egress", "deny-ingress"])
    if kind == "ingress":
        spec |= {"policyTypes": ["Ingress"], "ingress": [{"from": [peer], **rule}]}
    elif kind == "egress":
        spec |= {"policyTypes": ["Egress"], "egress": [{"to": [peer], **rule}]}
    else:
        spec |= {"policyTypes": ["Ingress"]}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@dataclass
class Figures:
    changes: int = 0
    probes: int = 0
    wrong_after_convergence: int = 0
    convergence_s: list[float] = field(default_factory=list)
    restarts: int = 0
    restart_connections: int = 0
    broken_by_restart: int = 0
    unexpected_exits: int = 0
    api_outages: int = 0
    samples: list[tuple[int, float, float, int, int]] = field(
        default_factory=list
    )  # run, t, rss MB, fds, threads
    actions: dict[str, int] = field(default_factory=dict)


class Agent:
    def __init__(self, *, api: str, topo: Topology, workdir: Path, pin_dir: Path, health_port: int) -> None:
        self.command = [
            sys.executable,
            "-m",
            "meshagent.cli.main",
            "run",
            "--api-server",
            api,
            "--node",
            NODE,
            "--node-netns",
            topo.node,
            "--pin-dir",
            str(pin_dir),
            "--observer-socket",
            str(workdir / "observer.sock"),
            "--metrics-listen",
            "127.0.0.1:0",
            "--health-listen",
            f"127.0.0.1:{health_port}",
            "--log-format",
            "text",
            # A small flow ring fills within the first minute: the footprint after warm-up then shows
            # growth that is not the ring filling up.
            "--flow-ring-size",
            str(FLOW_RING_SIZE),
        ]
        self.health_port = health_port
        self.log = workdir / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.run_index = 0
        self.started = 0.0

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=log)
        self.run_index += 1
        self.started = time.monotonic()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 90.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return True
            if self.exited():
                return False
            time.sleep(0.1)
        return False

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def sample(self) -> tuple[float, int, int] | None:
        """RSS in MB (the agent and its front process), open descriptors and threads of the agent."""
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            pids = [self.process.pid, *_children(self.process.pid)]
            rss_kb = sum(_status_field(pid, "VmRSS") for pid in pids)
            fds = len(list(Path(f"/proc/{self.process.pid}/fd").iterdir()))
            threads = _status_field(self.process.pid, "Threads")
        except (OSError, ValueError):
            return None
        return rss_kb / 1024, fds, threads


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {name} for {pid}")


class Soak:
    def __init__(
        self,
        *,
        seconds: float,
        seed: int,
        workdir: Path,
        health_port: int | None = None,
        first_actions: tuple[str, ...] = ("policy", "restart_mid_change", "api_outage"),
        disruption_every_s: float = 45.0,
    ) -> None:
        self.deadline = time.monotonic() + seconds
        self.first_actions = first_actions  # before the random ones: a short run still has each kind
        # At most one restart or API outage per this many seconds, so that agent runs last long enough
        # for their footprint to be measured.
        self.disruption_every_s = disruption_every_s
        self._last_disruption = time.monotonic()
        self.rng = random.Random(seed)
        self.seed = seed
        self.workdir = workdir
        self.figures = Figures()
        self.emulator = KubeEmulator(bookmark_interval=0.5)
        self.topo = Topology()
        self.pin_dir = Path("/sys/fs/bpf") / f"meshagent-soak-{uuid.uuid4().hex[:8]}"
        # A port of its own (not a fixed number), so that soaks or agents running beside it cannot hold it.
        self.health_port = health_port or _free_port()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name) -> desired
        self.pods: dict[tuple[str, str], Pod] = {}
        self.stable: set[tuple[str, str]] = set()  # never deleted: the ends of long-lived connections
        self._next_ip = 10
        self._next_pod = 0
        self._next_policy = 0
        self.agent: Agent | None = None

    # --- desired state ------------------------------------------------------------------------

    def put(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj
        self.emulator.apply(json.loads(json.dumps(obj)))

    def remove(self, kind: str, namespace: str, name: str) -> None:
        self.objects.pop((kind, namespace, name), None)
        self.emulator.delete(kind, namespace, name)

    def add_pod(self, namespace: str) -> None:
        name = f"p{self._next_pod}"
        self._next_pod += 1
        ip = IPv4Address(f"10.246.{self._next_ip // 250}.{self._next_ip % 250 + 2}")
        self._next_ip += 1
        pod = self.topo.add_pod(f"{namespace[:2]}{name}", ip)
        pod.serve(tcp=(PORT, PORT + 1))
        self.pods[(namespace, name)] = pod
        self.put(pod_obj(namespace, name, ip, self.rng.choice(APPS), ipv6=pod.ipv6))

    def delete_pod(self, key: tuple[str, str]) -> None:
        self.remove("Pod", *key)
        pod = self.pods.pop(key)
        self.topo.remove_pod(pod.name)

    def expected(self) -> dict[tuple[tuple[str, str], tuple[str, str]], bool]:
        """What the policy evaluator says of every (client, server) pair, from the desired objects."""
        compiler = PolicyCompiler()
        ingest = PolicyIngest(compiler)
        for obj in self.objects.values():
            ingest.handle("ADDED", obj)
        out = {}
        for src_key, src in self.pods.items():
            for dst_key, dst in self.pods.items():
                if src_key == dst_key:
                    continue
                source = Peer(src.ip, compiler.pods.get(src_key))
                destination = Peer(dst.ip, compiler.pods.get(dst_key))
                result = trace(
                    compiler, source=source, destination=destination, protocol=Protocol.TCP, port=PORT
                )
                decided = [d.decision.verdict for d in result.directions]
                out[(src_key, dst_key)] = Verdict.DENIED not in decided
        return out

    # --- probing ------------------------------------------------------------------------------

    def probe_matrix(self) -> dict[tuple[tuple[str, str], tuple[str, str]], bool]:
        running = []
        for src_key, src in self.pods.items():
            targets = [(dst_key, dst) for dst_key, dst in self.pods.items() if dst_key != src_key]
            request = {"timeout": 0.8, "probes": [["tcp", str(dst.ip), PORT] for _, dst in targets]}
            process = subprocess.Popen(
                src.argv(sys.executable, str(PROBER)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert process.stdin is not None
            process.stdin.write(json.dumps(request))
            process.stdin.close()
            running.append((src_key, targets, process))
        out = {}
        for src_key, targets, process in running:
            assert process.stdout is not None
            text = process.stdout.read()
            process.wait(timeout=30)
            results = json.loads(text) if text.strip() else [False] * len(targets)
            for (dst_key, _), ok in zip(targets, results, strict=True):
                out[(src_key, dst_key)] = bool(ok)
        self.figures.probes += len(out)
        return out

    def converge(self, what: str) -> None:
        """Probes until the kernel matches the evaluator, and records how long that took."""
        started = time.monotonic()
        want = self.expected()
        while True:
            self.check_agent()
            got = self.probe_matrix()
            wrong = [pair for pair, ok in want.items() if got.get(pair) != ok]
            elapsed = time.monotonic() - started
            if not wrong:
                self.figures.convergence_s.append(elapsed)
                return
            if elapsed > CONVERGENCE_DEADLINE_S:
                self.figures.wrong_after_convergence += len(wrong)
                sample = ", ".join(f"{s[0]}/{s[1]}->{d[0]}/{d[1]} want {want[(s, d)]}" for s, d in wrong[:5])
                print(
                    f"soak: after {what}: {len(wrong)} cells wrong after {elapsed:.1f} s: {sample}",
                    flush=True,
                )
                return
            time.sleep(0.2)

    # --- the agent ----------------------------------------------------------------------------

    def check_agent(self) -> None:
        agent = self.agent
        assert agent is not None
        if agent.exited():
            self.figures.unexpected_exits += 1
            print(
                f"soak: the agent exited by itself (rc {agent.process.returncode if agent.process else '?'})"
            )
            agent.start()
            agent.wait_ready()

    def _sample_forever(self, stop: threading.Event) -> None:
        """The agent's footprint once a second, tagged with the agent run it belongs to."""
        while not stop.wait(1.0):
            agent = self.agent
            if agent is None:
                continue
            run, started = agent.run_index, agent.started
            if not agent.ready():
                continue  # starting or stopping: not its steady footprint
            sample = agent.sample()
            if sample is not None:
                self.figures.samples.append((run, time.monotonic() - started, *sample))

    def restart_agent(self, *, mid_change: bool) -> None:
        assert self.agent is not None
        talks = self.start_talks()
        if mid_change:
            self.random_change(allow_restart=False)
            time.sleep(self.rng.uniform(0.0, 0.3))
        self.agent.kill()
        self.figures.restarts += 1
        self.agent.start()
        if not self.agent.wait_ready():
            self.figures.unexpected_exits += 1
            print("soak: the restarted agent did not become ready", flush=True)
            self.agent.kill()  # never two agents on the same pins: the second start must be the only one
            self.agent.start()
            self.agent.wait_ready()
        self.finish_talks(talks)

    def start_talks(self) -> list[subprocess.Popen[str]]:
        """Two long-lived connections between stable pods that the policy allows now."""
        want = self.expected()
        pairs = [(s, d) for (s, d), ok in want.items() if ok and s in self.stable and d in self.stable]
        talks = []
        for src_key, dst_key in self.rng.sample(pairs, min(2, len(pairs))):
            talk = self.pods[src_key].talk(self.pods[dst_key].ip, PORT, seconds=8.0)
            assert talk.stdout is not None
            if talk.stdout.readline().strip() == "connected":
                talks.append(talk)
            else:
                talk.kill()
        self.figures.restart_connections += len(talks)
        return talks

    def finish_talks(self, talks: list[subprocess.Popen[str]]) -> None:
        for talk in talks:
            out, _ = talk.communicate(timeout=60)
            exchanges, failures = (int(x) for x in out.split()[-2:])
            if failures or exchanges == 0:
                self.figures.broken_by_restart += 1

    # --- churn --------------------------------------------------------------------------------

    def random_change(self, *, allow_restart: bool = True) -> str:
        choices = [
            "add_pod",
            "delete_pod",
            "relabel_pod",
            "relabel_namespace",
            "policy",
            "policy",
            "delete_policy",
        ]
        if allow_restart and time.monotonic() - self._last_disruption >= self.disruption_every_s:
            choices += ["restart", "restart_mid_change", "api_outage"]
        return self.do(self.rng.choice(choices))

    def do(self, action: str) -> str:
        self.figures.actions[action] = self.figures.actions.get(action, 0) + 1
        if action in ("restart", "restart_mid_change", "api_outage"):
            self._last_disruption = time.monotonic()
        if action == "add_pod" and len(self.pods) < 16:
            self.add_pod(self.rng.choice(NAMESPACES))
        elif action == "delete_pod" and len(self.pods) > 12:
            self.delete_pod(self.rng.choice(sorted(set(self.pods) - self.stable)))
        elif action == "relabel_pod":
            namespace, name = self.rng.choice(sorted(self.pods))
            obj = self.objects[("Pod", namespace, name)]
            obj["metadata"]["labels"] = {"app": self.rng.choice(APPS)}
            self.put(obj)
        elif action == "relabel_namespace":
            self.put(namespace_obj(self.rng.choice(NAMESPACES), self.rng.choice(TEAMS)))
        elif action == "policy":
            existing = [k for k in self.objects if k[0] == "NetworkPolicy"]
            if existing and self.rng.random() < 0.4:
                _, namespace, name = self.rng.choice(existing)  # edited in place
            else:
                namespace, name = self.rng.choice(NAMESPACES), f"np{self._next_policy}"
                self._next_policy += 1
            self.put(random_policy(self.rng, namespace, name))
        elif action == "delete_policy":
            existing = [k for k in self.objects if k[0] == "NetworkPolicy"]
            if existing:
                self.remove(*self.rng.choice(existing))
        elif action in ("restart", "restart_mid_change"):
            self.restart_agent(mid_change=action == "restart_mid_change")
        elif action == "api_outage":
            self.api_outage()
        return action

    def api_outage(self) -> None:
        """The API server goes away for a while, changes happen meanwhile, and it comes back with its
        history compacted: the agent's watches get 410 Gone and must list again."""
        self.figures.api_outages += 1
        self.emulator.stop()
        time.sleep(self.rng.uniform(1.0, 4.0))
        for _ in range(self.rng.randint(1, 3)):
            self.random_change(allow_restart=False)  # recorded while nobody watches
        self.emulator.compact()
        self.emulator.start()

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> Figures:
        self.emulator.start()
        self.topo.create()
        stop_sampling = threading.Event()
        sampler = threading.Thread(target=self._sample_forever, args=(stop_sampling,), daemon=True)
        sampler.start()
        try:
            for index, namespace in enumerate(NAMESPACES):
                self.put(namespace_obj(namespace, TEAMS[index % 2]))
            for namespace in NAMESPACES:
                for _ in range(4):
                    self.add_pod(namespace)
            self.stable = set(list(self.pods)[:4])
            self.agent = Agent(
                api=self.emulator.url,
                topo=self.topo,
                workdir=self.workdir,
                pin_dir=self.pin_dir,
                health_port=self.health_port,
            )
            self.agent.start()
            if not self.agent.wait_ready():
                raise RuntimeError(f"the agent did not start: {self.agent.log.read_text()[-2000:]}")
            self.converge("start")
            for action in self.first_actions:
                self.do(action)
                self.figures.changes += 1
                self.converge(action)
            while time.monotonic() < self.deadline:
                action = self.random_change()
                self.figures.changes += 1
                self.converge(action)
            return self.figures
        finally:
            stop_sampling.set()
            sampler.join()
            if self.agent is not None:
                self.agent.kill(signal.SIGTERM)
            self.emulator.stop()
            self.topo.close()
            subprocess.run(
                [sys.executable, "-m", "meshagent.cli.main", "uninstall", "--pin-dir", str(self.pin_dir)],
                capture_output=True,
                timeout=60,
            )


def growth_per_hour(
    samples: list[tuple[int, float, float, int, int]], column: int, warmup_s: float
) -> tuple[float, int]:
    """Least-squares slope of one sampled column over time within each agent run (runs pooled, each
    around its own mean), after a warm-up, per hour; and how many runs were long enough to count."""
    by_run: dict[int, list[tuple[float, float]]] = {}
    for sample in samples:
        if sample[1] >= warmup_s:
            by_run.setdefault(sample[0], []).append((sample[1], float(sample[column])))
    num = den = 0.0
    counted = 0
    for points in by_run.values():
        if points[-1][0] - points[0][0] < MIN_RUN_SPAN_S:
            continue
        counted += 1
        mean_t = sum(t for t, _ in points) / len(points)
        mean_v = sum(v for _, v in points) / len(points)
        num += sum((t - mean_t) * (v - mean_v) for t, v in points)
        den += sum((t - mean_t) ** 2 for t, _ in points)
    return (num / den * 3600 if den else 0.0), counted


def report(figures: Figures, *, seconds: float, seed: int) -> list[str]:
    conv = sorted(figures.convergence_s)
    median = conv[len(conv) // 2] if conv else 0.0
    lines = [
        f"BENCH soak seconds={seconds:.0f} seed={seed} changes={figures.changes} probes={figures.probes} "
        f"actions={','.join(f'{k}:{v}' for k, v in sorted(figures.actions.items()))}",
        f"BENCH soak wrong_verdicts_after_convergence={figures.wrong_after_convergence} "
        f"convergence_max_s={max(conv, default=0.0):.2f} convergence_median_s={median:.2f}",
        f"BENCH soak restarts={figures.restarts} connections_across_restarts={figures.restart_connections} "
        f"broken_by_restart={figures.broken_by_restart} unexpected_exits={figures.unexpected_exits} "
        f"api_outages={figures.api_outages}",
    ]
    if figures.samples:
        rss = [s[2] for s in figures.samples]
        fds = [s[3] for s in figures.samples]
        threads = [s[4] for s in figures.samples]
        rss_growth, runs = growth_per_hour(figures.samples, 2, WARMUP_S)
        fds_growth, _ = growth_per_hour(figures.samples, 3, WARMUP_S)
        threads_growth, _ = growth_per_hour(figures.samples, 4, WARMUP_S)
        lines.append(
            f"BENCH soak agent_rss_mb_min={min(rss):.0f} agent_rss_mb_max={max(rss):.0f} "
            f"fds_min={min(fds)} fds_max={max(fds)} threads_min={min(threads)} threads_max={max(threads)} "
            f"samples={len(figures.samples)}"
        )
        lines.append(
            f"BENCH soak growth_after_warmup rss_mb_per_hour={rss_growth:.1f} fds_per_hour={fds_growth:.1f} "
            f"threads_per_hour={threads_growth:.1f} runs_measured={runs} flow_ring={FLOW_RING_SIZE}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--disruption-every",
        type=float,
        default=45.0,
        help="at most one agent restart or API outage per this many seconds (longer: longer agent runs to "
        "measure the footprint's growth on)",
    )
    args = parser.parse_args(argv)
    # A soak stopped by `timeout` or a CI runner gets SIGTERM: exit through the cleanup, as on Ctrl-C,
    # so no namespace, pin directory or agent is left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    workdir = args.workdir or Path(f"/tmp/meshagent-soak-{uuid.uuid4().hex[:8]}")
    workdir.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    print(f"soak: {args.minutes} minutes, seed {seed}, agent log {workdir / 'agent.log'}", flush=True)
    figures = Soak(
        seconds=seconds, seed=seed, workdir=workdir, disruption_every_s=args.disruption_every
    ).run()
    for line in report(figures, seconds=seconds, seed=seed):
        print(line, flush=True)
    bad = figures.wrong_after_convergence or figures.broken_by_restart or figures.unexpected_exits
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
