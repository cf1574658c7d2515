"""Restart without loss: `kill -9` the agent during steady traffic and during a policy change. While it
is down the kernel keeps enforcing the last state; a restarted agent adopts the pinned maps and ends in
exactly the state a fresh agent would compile."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.datapath.layout import current_maps_dir
from meshagent.datapath.loader import Capacities
from meshagent.datapath.pinned import PinnedMaps
from meshagent.testing.topology import Pod, Topology

from tests.agent.test_agent_e2e import allowed, db_policy, eventually, pod_manifest

pytestmark = pytest.mark.kernel

NODE = "node-1"


class AgentProcess:
    """`meshagent run` as its own process, so that it can be killed for real."""

    def __init__(
        self, topo: Topology, manifests: Path, pin_dir: Path, workdir: Path, health_port: int
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "meshagent.cli.main",
            "run",
            "--manifests",
            str(manifests),
            "--node",
            NODE,
            "--node-netns",
            topo.node,
            "--pin-dir",
            str(pin_dir),
            "--observer-socket",
            str(workdir / "o.sock"),
            "--metrics-listen",
            "127.0.0.1:0",
            "--health-listen",
            f"127.0.0.1:{health_port}",
            "--log-format",
            "text",
        ]
        self.health_port = health_port
        self.log = workdir / f"agent-{health_port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Starts and waits until ready; returns the seconds it took."""
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=log)
        ready = eventually(self.ready, timeout=60)
        assert ready is not None, self.log.read_text()[-3000:]
        return time.monotonic() - started

    def children(self) -> list[str]:
        """Command lines of the processes the agent started and that are still there."""
        assert self.process is not None
        found: list[str] = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        return found

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Topology, dict[str, Pod], Path]]:
    with Topology() as topo:
        pods = {
            name: topo.add_pod(name, f"10.244.8.{10 * i}") for i, name in enumerate(("web", "db", "other"), 1)
        }
        pods["db"].serve(tcp=(80, 81))
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        (manifests / "cluster.yaml").write_text(
            "---\n".join(
                [
                    "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
                    *(
                        pod_manifest(name, "shop", pod.ip, {"app": name}, ipv6=pod.ipv6)
                        for name, pod in pods.items()
                    ),
                ]
            )
        )
        (manifests / "policy.yaml").write_text(db_policy("[{port: 80}]"))
        yield topo, pods, manifests


def _state(pin_dir: Path) -> tuple[object, ...]:
    with PinnedMaps(current_maps_dir(pin_dir, Capacities().layout_flags())) as maps:
        endpoints, ipcache, trie = maps.state()
    return endpoints, ipcache, trie


def test_kill_minus_nine_keeps_enforcing_and_restart_converges(
    cluster: tuple[Topology, dict[str, Pod], Path], tmp_path: Path
) -> None:
    topo, pods, manifests = cluster
    web, db, other = pods["web"], pods["db"], pods["other"]
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}"
    agent = AgentProcess(topo, manifests, pin_dir, tmp_path, health_port=19871)
    steady = None
    try:
        agent.start()
        assert allowed(web, db, 80) and not allowed(other, db, 80)
        # Its only child is the observer front process: entering the node's namespace forks no helpers.
        children = agent.children()
        assert len(children) == 1 and "-m meshagent.observer.frontproc " in children[0], children

        steady = web.talk(db.ip, 80, seconds=12.0)
        assert steady.stdout is not None and steady.stdout.readline().strip() == "connected"

        # Killed during steady traffic: nothing changes for packets.
        agent.kill()
        assert not allowed(other, db, 80), "denied traffic stays denied while the agent is down"
        assert allowed(web, db, 80), "allowed traffic keeps flowing while the agent is down"

        # A policy change while the agent is down waits for it; the kernel keeps the last state.
        (manifests / "policy.yaml").write_text(db_policy("[{port: 80}, {port: 81}]"))
        time.sleep(0.3)
        assert not allowed(web, db, 81)

        agent.start()
        assert eventually(lambda: allowed(web, db, 81)) is not None, "the restarted agent applied the change"
        assert not allowed(other, db, 80)

        # Killed in the middle of a policy change (right after the file changed), then restarted.
        (manifests / "policy.yaml").write_text(textwrap.dedent(db_policy("[{port: 81}]")))
        time.sleep(0.05)
        agent.kill()
        agent.start()
        assert eventually(lambda: not allowed(web, db, 80)) is not None
        assert allowed(web, db, 81)

        out, err = steady.communicate(timeout=30)
        exchanges, failures = (int(x) for x in out.split())
        assert failures == 0 and exchanges > 50, (out, err)

        restarted = _state(pin_dir)
        agent.kill(signal.SIGTERM)  # a clean stop leaves the kernel as it is ...
        assert _state(pin_dir) == restarted
        assert not allowed(other, db, 80)
    finally:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.kill()
        if steady is not None and steady.poll() is None:
            steady.kill()
        # ... and `meshagent uninstall` removes it.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshagent.cli.main",
                "uninstall",
                "--pin-dir",
                str(pin_dir),
                "--node-netns",
                topo.node,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    assert not pin_dir.exists()
    assert allowed(other, db, 80), "uninstalled: nothing enforces any more"

    # A fresh agent on empty maps compiles exactly what the restarted one ended with.
    fresh_dir = Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}"
    fresh = AgentProcess(topo, manifests, fresh_dir, tmp_path, health_port=19872)
    try:
        fresh.start()
        assert _state(fresh_dir) == restarted
    finally:
        if fresh.process is not None:
            fresh.kill(signal.SIGTERM)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "meshagent.cli.main",
                "uninstall",
                "--pin-dir",
                str(fresh_dir),
                "--node-netns",
                topo.node,
            ],
            capture_output=True,
            timeout=60,
        )
