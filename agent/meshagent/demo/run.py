"""Runs the demo: a node namespace with the shop's pods, the agent (`meshagent run --manifests`) as a
separate process, traffic partly allowed, partly denied and partly audited, live flows, and the service
map (`meshagent ui`) beside the agent, whose address it prints.

Everything lives in network namespaces this demo creates, whose node has no route off the machine; all of
it is removed at the end (also on Ctrl-C), unless --keep leaves it for exploration.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

from meshagent.demo import manifests
from meshagent.demo.manifests import PODS, DemoPod
from meshagent.testing.topology import Pod, Topology

NODE = "demo-node"
UI_PORT = 8090  # the service map's port when it is free (another free port otherwise)
# (client, server, expected) pairs the traffic driver cycles through.
CALLS = (
    ("stray", "frontend", "allowed: frontend is public"),
    ("frontend", "cart", "allowed: cart accepts the frontend"),
    ("stray", "cart", "denied: default deny in shop"),
    ("cart", "db", "allowed: db accepts the cart"),
    ("frontend", "db", "audited: data is in audit mode"),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ui_port() -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", UI_PORT))
        except OSError:
            return _free_port()
    return UI_PORT


def _meshagent(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshagent.cli.main", *args]


class Demo:
    def __init__(self, *, duration: float | None, keep: bool) -> None:
        self.duration = duration
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix="meshagent-demo-"))
        self.socket = self.workdir / "observer.sock"
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self.pin_dir = Path("/sys/fs/bpf") / f"meshagent-demo-{uuid.uuid4().hex[:6]}"
        self.topology = Topology(prefix=f"mademo{os.getpid() % 10000}")
        self.pods: dict[str, Pod] = {}
        self.agent: subprocess.Popen[str] | None = None
        self.ui: subprocess.Popen[str] | None = None
        self.ui_url = ""
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()

    # --- set-up ----------------------------------------------------------------------------------

    def build(self) -> None:
        self.topology.create()
        for spec in PODS:
            pod = self.topology.add_pod(spec.name, spec.ip)
            self.pods[spec.name] = pod
            if spec.port:
                pod.serve(tcp=(spec.port,))
        manifests.write(self.workdir / "manifests", NODE)
        print(f"cluster in a box: node namespace {self.topology.node}, pods:")
        for spec in PODS:
            print(
                f"  {spec.namespace}/{spec.name:<9} {spec.ip}"
                + (f"  serving TCP {spec.port}" if spec.port else "")
            )

    def start_agent(self) -> None:
        command = _meshagent(
            "run",
            "--manifests",
            str(self.workdir / "manifests"),
            "--node",
            NODE,
            "--node-netns",
            self.topology.node,
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
            "warning",
            "--cleanup",
        )
        print("\nstarting the agent: meshagent run --manifests ... --node-netns " + self.topology.node)
        started = time.monotonic()
        with open(self.workdir / "agent.log", "w") as log:  # the child keeps its own copy of the fd
            self.agent = subprocess.Popen(command, text=True, stdout=subprocess.DEVNULL, stderr=log)
        while time.monotonic() - started < 60:
            if self.agent.poll() is not None:
                raise RuntimeError(f"the agent exited: {(self.workdir / 'agent.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/readyz", timeout=1
                ) as answer:
                    if answer.status == 200:
                        elapsed = time.monotonic() - started
                        print(f"agent ready in {elapsed:.1f} s (policies compiled into the kernel)")
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the agent did not become ready within 60 s")

    def start_ui(self) -> str:
        """Starts the service map beside the agent, reading its flows (and, for the panels' policy trace,
        the demo's manifests); its URL."""
        command = _meshagent(
            "ui",
            "--server",
            f"unix://{self.socket}",
            "--listen",
            f"127.0.0.1:{_ui_port()}",
            "--manifests",
            str(self.workdir / "manifests"),
        )
        with open(self.workdir / "ui.log", "w") as log:
            self.ui = subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=log)
        assert self.ui.stdout is not None
        ready = threading.Event()
        lines: list[str] = []

        def read_url() -> None:
            assert self.ui is not None and self.ui.stdout is not None
            lines.append(self.ui.stdout.readline())
            ready.set()

        threading.Thread(target=read_url, daemon=True).start()
        if not ready.wait(30) or "http://" not in lines[0]:
            raise RuntimeError(
                f"the service map did not start: {(self.workdir / 'ui.log').read_text()[-2000:]}"
            )
        self.ui_url = "http" + lines[0].split("http", 1)[1].split()[0]
        print(f"service map (meshagent ui): {self.ui_url}")
        return self.ui_url

    # --- traffic and flows -----------------------------------------------------------------------

    def drive_traffic(self) -> None:
        by_name = {spec.name: spec for spec in PODS}
        while not self._stop.is_set():
            for client, server, _ in CALLS:
                spec: DemoPod = by_name[server]
                result = self.pods[client].probe("tcp", spec.ip, spec.port, timeout=0.3)
                self.outcomes[f"{client}->{server} {'ok' if result['ok'] else 'blocked'}"] += 1
                if self._stop.wait(0.3):
                    return

    def show_flows(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            _meshagent(
                "flows",
                "--server",
                f"unix://{self.socket}",
                "--follow",
                "--print-policy-names",
                "--type",
                "policy-verdict",
            ),
            text=True,
        )

    def summary(self) -> dict[str, int]:
        result = subprocess.run(
            _meshagent("flows", "--server", f"unix://{self.socket}", "--all", "-o", "json"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        verdicts: Counter[str] = Counter()
        for line in result.stdout.splitlines():
            try:
                flow = json.loads(line).get("flow", json.loads(line))
            except json.JSONDecodeError:
                continue
            verdicts[str(flow.get("verdict", "?"))] += 1
        return dict(verdicts)

    # --- run -------------------------------------------------------------------------------------

    def run(self) -> int:
        # Ctrl-C and SIGTERM both end the demo through its teardown (a shell that starts it in the
        # background makes it ignore SIGINT; a process manager stops it with SIGTERM).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.build()
            self.start_agent()
            self.start_ui()
            print("\ntraffic (cycling): " + "; ".join(f"{c} -> {s} ({e})" for c, s, e in CALLS))
            print(
                "live policy verdicts (meshagent flows --follow --type policy-verdict --print-policy-names):"
            )
            driver = threading.Thread(target=self.drive_traffic, daemon=True)
            driver.start()
            follower = self.show_flows()
            try:
                if self.duration is not None and not self.keep:
                    time.sleep(self.duration)
                else:
                    self._guide()
                    signal.pause()
            except KeyboardInterrupt:
                pass
            self._stop.set()
            driver.join(timeout=5)
            follower.terminate()
            follower.wait(timeout=5)
            verdicts = self.summary()
            return self._report(verdicts)
        finally:
            self.teardown()

    def _guide(self) -> None:
        sock = f"unix://{self.socket}"
        print(textwrap_guide(sock, self.metrics_port, self.health_port, self.workdir, self.topology.node))
        print(f"  the service map: open {self.ui_url} in a browser\n")

    def _report(self, verdicts: dict[str, int]) -> int:
        print("\n== summary")
        for outcome, count in sorted(self.outcomes.items()):
            print(f"  {outcome:<28} x{count}")
        print(f"  flows by verdict: {verdicts}")
        wanted = {
            "stray->cart blocked",
            "frontend->cart ok",
            "frontend->db ok",
            "cart->db ok",
            "stray->frontend ok",
        }
        missing = sorted(wanted - set(self.outcomes))
        unexpected = sorted(o for o in self.outcomes if o not in wanted)
        shown = all(verdicts.get(v) for v in ("FORWARDED", "DROPPED", "AUDIT"))
        if missing or unexpected or not shown:
            print(f"  NOT AS EXPECTED: missing {missing}, unexpected {unexpected}, verdicts {verdicts}")
            return 1
        print(
            "  as expected: public frontend, cart only from frontend, db only from cart (audited otherwise)"
        )
        return 0

    def teardown(self) -> None:
        if self.ui is not None and self.ui.poll() is None:
            self.ui.terminate()
            try:
                self.ui.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.ui.kill()
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)  # with --cleanup: removes its filters and pinned maps
            try:
                self.agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.agent.kill()
        self.topology.close()
        subprocess.run(["rm", "-rf", str(self.pin_dir)], check=False)
        print("cleaned up: pods, node namespace, tc filters and pinned maps removed")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def textwrap_guide(sock: str, metrics_port: int, health_port: int, workdir: Path, node: str) -> str:
    return f"""
== explore (Ctrl-C ends the demo and removes everything)
  meshagent flows --server {sock} --last 20 --print-policy-names
  meshagent flows --server {sock} --verdict DROPPED -o table
  meshagent flows --server {sock} --aggregate-by src,dst,port,verdict --all
  meshagent policy trace --manifests {workdir}/manifests --from default/stray --to shop/cart --port 8080
  meshagent status --server {sock} --health 127.0.0.1:{health_port}
  curl -s 127.0.0.1:{metrics_port}/metrics | grep meshagent_
  curl -s 127.0.0.1:{health_port}/status
  ip netns exec {node} tc filter show dev <pod veth> ingress
"""
