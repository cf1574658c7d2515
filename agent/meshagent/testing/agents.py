"""One `meshagent run` per node of a ClusterTopology, each as its own process with its own pin directory,
flow socket and ports, as a DaemonSet would run them (tests, benchmarks and the demo).

All agents read one source: a manifest directory or an API server. Each is told its node's name and
network namespace; the Node objects (see ClusterTopology.manifests) give it its own InternalIP.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

from meshagent.testing.cluster import ClusterNode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def meshagent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshagent.cli.main", *args]


class NodeAgent:
    """The agent of one node. start() waits until it is ready; stop() ends it with --cleanup (its filters
    and pinned maps go), kill() ends it the hard way (the kernel keeps enforcing; start() adopts)."""

    def __init__(
        self,
        node: ClusterNode,
        workdir: Path,
        *,
        manifests: Path | None = None,
        api_server: str | None = None,
        extra_args: Sequence[str] = (),
        log_level: str = "info",
    ) -> None:
        if (manifests is None) == (api_server is None):
            raise ValueError("give exactly one source: manifests or api_server")
        self.node = node
        self.workdir = workdir / node.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "observer.sock"
        self.pin_dir = Path("/sys/fs/bpf") / f"meshagent-{node.name}-{uuid.uuid4().hex[:8]}"
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.log = self.workdir / "agent.log"
        source = (
            ["--manifests", str(manifests)] if manifests is not None else ["--api-server", str(api_server)]
        )
        self.command = meshagent_command(
            "run",
            *source,
            "--node",
            node.name,
            "--node-netns",
            node.netns,
            "--pin-dir",
            str(self.pin_dir),
            "--observer-socket",
            str(self.socket),
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--health-listen",
            f"127.0.0.1:{self.health_port}",
            "--log-format",
            "text",
            "--log-level",
            log_level,
            "--cleanup",
            *extra_args,
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> str:
        """Its flow API, as `meshagent flows --server` and the relay take it."""
        return f"unix://{self.socket}"

    def start(self, *, timeout: float = 90.0) -> float:
        """Starts the agent and waits until it is ready; returns the seconds it took."""
        started = time.monotonic()
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=log)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent of {self.node.name} exited: {self.log_tail()}")
            if self.ready():
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"agent of {self.node.name} not ready within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def close(self) -> None:
        """Stops the agent and removes its pinned maps, also after a kill."""
        self.stop()
        shutil.rmtree(self.pin_dir, ignore_errors=True)


def start_agents(agents: Sequence[NodeAgent]) -> list[float]:
    """Starts every agent at once (their BPF compiles overlap) and waits for all; returns the seconds
    each took."""
    started = time.monotonic()
    for agent in agents:
        with open(agent.log, "ab") as log:
            agent.process = subprocess.Popen(agent.command, stdout=subprocess.DEVNULL, stderr=log)
    took: dict[int, float] = {}
    while len(took) < len(agents):
        if time.monotonic() - started > 120:
            waiting = [a.node.name for i, a in enumerate(agents) if i not in took]
            raise RuntimeError(f"agents not ready within 120 s: {waiting}")
        for i, agent in enumerate(agents):
            if i in took:
                continue
            if not agent.running():
                raise RuntimeError(f"agent of {agent.node.name} exited: {agent.log_tail()}")
            if agent.ready():
                took[i] = time.monotonic() - started
        time.sleep(0.1)
    return [took[i] for i in range(len(agents))]
