"""Benchmark: time from an object change to its event reaching the consumer (the store's subscriber).

Two sources: the Kubernetes API (our emulator on loopback, the official client, one informer per
kind) and a manifest directory, watched with inotify and, side by side, with watchfiles forced to poll
(what happens where inotify is missing). Changes are made one at a time, each waited for, so the
figure is latency, not throughput. Prints `BENCH source_latency ...` lines and the ratio of the two
directory medians.

    .venv/bin/python bench/source_latency.py [--changes N] [--poll-interval S] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for the emulator, which lives with the tests

from meshagent.sources.directory_source import DirectorySource  # noqa: E402
from meshagent.sources.events import ObjectEvent, SourceEvent  # noqa: E402
from meshagent.sources.kinds import Kind  # noqa: E402
from meshagent.sources.kube_client import load_api_client  # noqa: E402
from meshagent.sources.kube_source import KubernetesSource  # noqa: E402
from meshagent.sources.pipeline import Dispatcher  # noqa: E402
from meshagent.sources.store import ObjectStore  # noqa: E402

from tests.sources.k8s_emulator import KubeEmulator  # noqa: E402


class Arrivals:
    """Subscriber: records when the event carrying a given marker label arrives."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seen: dict[str, float] = {}

    def __call__(self, event: SourceEvent) -> None:
        if isinstance(event, ObjectEvent) and event.kind is Kind.POD:
            marker = (event.obj.get("metadata", {}).get("labels") or {}).get("bench")
            if marker is not None:
                with self._cond:
                    self._seen[marker] = time.perf_counter()
                    self._cond.notify_all()

    def wait(self, marker: str, timeout: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: marker in self._seen, timeout):
                raise TimeoutError(f"change {marker} never arrived")
            return self._seen[marker]


def pod(marker: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bench", "namespace": "default", "labels": {"bench": marker}},
        "spec": {"nodeName": "node-1"}, "status": {"podIP": "10.1.0.5"},
    }  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(source: str, latencies: list[float], extra: str = "") -> None:
    ms = [v * 1000 for v in latencies]
    print(
        f"BENCH source_latency source={source} n={len(ms)} median_ms={statistics.median(ms):.2f} "
        f"p99_ms={percentile(ms, 0.99):.2f} max_ms={max(ms):.2f}{extra}",
        flush=True,
    )


def bench_kubernetes(changes: int) -> list[float]:
    emu = KubeEmulator(bookmark_interval=1.0)
    emu.start()
    store = ObjectStore()
    arrivals = Arrivals()
    store.subscribe(arrivals)
    dispatcher = Dispatcher(store)
    source = KubernetesSource(load_api_client(host=emu.url), dispatcher.put, node="node-1")
    dispatcher.start()
    source.start()
    try:
        if not source.wait_ready(10):
            raise RuntimeError("source never became ready")
        latencies = []
        for i in range(changes + 5):
            marker = f"k{i}"
            start = time.perf_counter()
            emu.apply(pod(marker))
            latency = arrivals.wait(marker, 10) - start
            if i >= 5:  # the first changes warm up connections and caches
                latencies.append(latency)
        return latencies
    finally:
        source.stop()
        dispatcher.stop()
        emu.stop()


def bench_directory(changes: int, poll_interval: float, *, force_polling: bool) -> list[float]:
    # watchfiles reads this when the watcher starts: the way to make it poll as it would without inotify.
    previous = os.environ.get("WATCHFILES_FORCE_POLLING")
    os.environ["WATCHFILES_FORCE_POLLING"] = "true" if force_polling else "false"
    try:
        return _bench_directory(changes, poll_interval)
    finally:
        if previous is None:
            del os.environ["WATCHFILES_FORCE_POLLING"]
        else:
            os.environ["WATCHFILES_FORCE_POLLING"] = previous


def _bench_directory(changes: int, poll_interval: float) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="meshagent-bench-") as tmp:
        directory = Path(tmp)
        store = ObjectStore()
        arrivals = Arrivals()
        store.subscribe(arrivals)
        dispatcher = Dispatcher(store)
        source = DirectorySource(directory, dispatcher.put, poll_interval=poll_interval)
        dispatcher.start()
        source.start()
        try:
            latencies = []
            rng = random.Random(1)
            path = directory / "pod.yaml"
            for i in range(changes):
                marker = f"d{i}"
                text = (
                    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bench\n  namespace: default\n"
                    f"  labels: {{bench: {marker}}}\n"
                    "spec: {nodeName: node-1}\nstatus: {podIP: 10.1.0.5}\n"
                )
                tmp_path = directory / ".pod.yaml.tmp"
                tmp_path.write_text(text)
                # A random phase against a poller: changes come at any time, not right after a scan.
                time.sleep(rng.uniform(0, poll_interval))
                start = time.perf_counter()
                os.replace(tmp_path, path)
                latencies.append(arrivals.wait(marker, 10) - start)
            return latencies
        finally:
            source.stop()
            dispatcher.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=300, help="changes per source")
    parser.add_argument(
        "--poll-interval", type=float, default=0.5, help="directory source poll interval (s) without inotify"
    )
    parser.add_argument("--quick", action="store_true", help="50 changes per source")
    args = parser.parse_args()
    changes = 50 if args.quick else args.changes
    logging.basicConfig(level=logging.WARNING)
    report("kubernetes", bench_kubernetes(changes), " transport=http-loopback client=kubernetes-official")
    dir_changes = max(20, changes // 3)
    watched = bench_directory(dir_changes, args.poll_interval, force_polling=False)
    report("directory", watched, " watch=inotify")
    polled = bench_directory(dir_changes, args.poll_interval, force_polling=True)
    report("directory", polled, f" watch=polling poll_interval_s={args.poll_interval}")
    ratio = statistics.median(polled) / statistics.median(watched)
    print(f"BENCH source_latency directory polling_over_inotify_median={ratio:.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
