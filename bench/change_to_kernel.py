"""Benchmark: time from an object change to the kernel's policy map holding its result, through the whole
agent (source -> store -> reconciler -> compiler -> apply_diff -> ma_policy), for the emulated Kubernetes
API and for a manifest directory. A NetworkPolicy's port is flipped back and forth; each change is waited
for (latency, not throughput) by reading the pinned map. Prints median and p99.

    .venv/bin/python bench/change_to_kernel.py [--changes N] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the API emulator lives with the tests

from meshagent.agent.config import AgentConfig  # noqa: E402
from meshagent.agent.runtime import Agent  # noqa: E402
from meshagent.datapath.layout import current_maps_dir  # noqa: E402
from meshagent.datapath.loader import Capacities  # noqa: E402
from meshagent.datapath.pinned import PinnedMaps  # noqa: E402
from meshagent.testing.benchtools import bench_line  # noqa: E402
from meshagent.testing.topology import Pod, Topology  # noqa: E402

from tests.sources.k8s_emulator import KubeEmulator  # noqa: E402

NODE = "bench-node"


def cluster_yaml(web: Pod, db: Pod) -> list[str]:
    """The namespace and both (dual-stack) pods, each listing both its addresses."""
    pods = [
        textwrap.dedent(f"""\
            apiVersion: v1
            kind: Pod
            metadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}
            spec: {{nodeName: {NODE}, containers: [{{name: c, image: x}}]}}
            status: {{podIP: "{pod.ip}", podIPs: [{{ip: "{pod.ip}"}}, {{ip: "{pod.ipv6}"}}]}}
            """)
        for name, pod in (("web", web), ("db", db))
    ]
    return ["apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n", *pods]


def policy_yaml(port: int) -> str:
    return textwrap.dedent(f"""\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: db, namespace: shop}}
        spec:
          podSelector: {{matchLabels: {{app: db}}}}
          ingress: [{{from: [{{podSelector: {{matchLabels: {{app: web}}}}}}], ports: [{{port: {port}}}]}}]
        """)


def ports_in_kernel(maps: PinnedMaps) -> set[int]:
    return {key.dport for key in maps.state()[2] if key.protocol == 6}


def measure(pin_dir: Path, change: Callable[[int], None], changes: int) -> list[float]:
    latencies = []
    with PinnedMaps(current_maps_dir(pin_dir, Capacities().layout_flags())) as maps:
        for i in range(changes):
            port = 1000 + i
            started = time.monotonic()
            change(port)
            while port not in ports_in_kernel(maps):
                if time.monotonic() - started > 10:
                    raise RuntimeError(f"change {i} did not reach the kernel in 10 s")
                time.sleep(0.0005)
            latencies.append(time.monotonic() - started)
    return latencies


def report(name: str, latencies: list[float]) -> None:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        bench_line(
            f"change_to_kernel_{name}",
            {
                "changes": len(latencies),
                "median_ms": statistics.median(latencies) * 1000,
                "p99_ms": p99 * 1000,
                "max_ms": ordered[-1] * 1000,
            },
        ),
        flush=True,
    )


def run(source: str, changes: int, poll: float) -> list[float]:
    with Topology() as topo, tempfile.TemporaryDirectory() as tmp:
        web = topo.add_pod("web", "10.244.11.10")
        db = topo.add_pod("db", "10.244.11.20")
        pin_dir = Path("/sys/fs/bpf") / f"meshagent-bench-{uuid.uuid4().hex[:8]}"
        common = dict(
            node=NODE,
            node_netns=topo.node,
            pin_dir=pin_dir,
            observer_socket=Path(tmp) / "o.sock",
            metrics_listen=None,
            health_listen=None,
            cleanup_on_exit=True,
        )
        emulator = None
        if source == "kubernetes":
            emulator = KubeEmulator()
            emulator.start()
            for doc in [*cluster_yaml(web, db), policy_yaml(80)]:
                emulator.apply(yaml.safe_load(doc))
            agent = Agent(AgentConfig(api_server=emulator.url, **common))  # type: ignore[arg-type]

            def change(port: int) -> None:
                assert emulator is not None
                emulator.apply(yaml.safe_load(policy_yaml(port)))
        else:
            manifests = Path(tmp) / "manifests"
            manifests.mkdir()
            (manifests / "cluster.yaml").write_text("---\n".join(cluster_yaml(web, db)))
            (manifests / "policy.yaml").write_text(policy_yaml(80))
            agent = Agent(AgentConfig(manifests=manifests, manifests_poll_seconds=poll, **common))  # type: ignore[arg-type]

            def change(port: int) -> None:
                (manifests / "policy.yaml").write_text(policy_yaml(port))

        agent.start()
        try:
            deadline = time.monotonic() + 60
            while not agent.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError("agent not ready in 60 s")
                time.sleep(0.05)
            return measure(pin_dir, change, changes)
        finally:
            agent.stop()
            if emulator is not None:
                emulator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument(
        "--poll-interval", type=float, default=0.5, help="directory source's safety scan (the default)"
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    changes = 30 if args.quick else args.changes
    report("kubernetes", run("kubernetes", changes, args.poll_interval))
    report(
        f"directory_inotify_scan_{args.poll_interval:g}s",
        run("directory", max(10, changes // 5), args.poll_interval),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
