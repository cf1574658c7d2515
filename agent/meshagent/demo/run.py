"""Runs the demo: node namespaces with the shop's pods, one agent per node (`meshagent run --manifests`)
as separate processes, traffic partly allowed, partly denied and partly audited, live flows, and the
service map (`meshagent ui`) beside the agents, whose address it prints.

With --nodes N the pods are spread over N nodes routed across an underlay (meshagent.testing.cluster),
so that most calls cross nodes: the caller's agent enforces its egress, the callee's agent its ingress.
`meshagent relay` then serves every node's flows as one API, and the service map reads the relay.

Everything lives in network namespaces this demo creates, whose nodes have no route off the machine; all
of it is removed at the end (also on Ctrl-C), unless --keep leaves it for exploration.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from meshagent.demo import manifests
from meshagent.demo.manifests import PODS, DemoPod
from meshagent.testing.agents import NodeAgent, free_port, meshagent_command, start_agents
from meshagent.testing.cluster import ClusterNode, ClusterTopology
from meshagent.testing.topology import Pod

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
IPV6_SUFFIX = " (IPv6)"  # the outcome of a call made to the server's IPv6 address


def node_names(nodes: int) -> list[str]:
    return [NODE] if nodes == 1 else [f"{NODE}-{i + 1}" for i in range(nodes)]


def _ui_port() -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", UI_PORT))
        except OSError:
            return free_port()
    return UI_PORT


def _meshagent(*args: str) -> list[str]:
    return meshagent_command(*args)


class Demo:
    def __init__(self, *, duration: float | None, keep: bool, nodes: int = 1) -> None:
        if nodes < 1:
            raise ValueError("--nodes must be at least 1")
        self.duration = duration
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix="meshagent-demo-"))
        self.cluster = ClusterTopology(
            nodes, prefix=f"mademo{os.getpid() % 10000}", node_names=node_names(nodes)
        )
        self.pods: dict[str, Pod] = {}
        self.addresses: dict[str, IPv4Address] = {}
        self.addresses6: dict[str, IPv6Address] = {}
        self.agents: list[NodeAgent] = []
        self.relay: subprocess.Popen[bytes] | None = None
        self.relay_socket = self.workdir / "relay.sock"
        self.ui: subprocess.Popen[str] | None = None
        self.ui_url = ""
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()

    # --- set-up ----------------------------------------------------------------------------------

    def node_of(self, index: int) -> ClusterNode:
        """The demo's pods go round the nodes in order, so that with two or more most calls cross nodes."""
        return self.cluster.nodes[index % len(self.cluster.nodes)]

    def build(self) -> None:
        self.cluster.create()
        placement: dict[str, tuple[str, IPv4Address, IPv6Address]] = {}
        for index, spec in enumerate(PODS):
            node = self.node_of(index)
            # Dual-stack pods, as in a dual-stack cluster: the same host part in both pod ranges.
            ip = node.next_pod_ip()
            ipv6 = node.pod_cidr6[int(ip) - int(node.pod_cidr.network_address)]
            pod = node.add_pod(spec.name, ip, ipv6=ipv6)
            self.pods[spec.name] = pod
            self.addresses[spec.name] = pod.ip
            self.addresses6[spec.name] = ipv6
            placement[spec.name] = (node.name, pod.ip, ipv6)
            if spec.port:
                pod.serve(tcp=(spec.port,))
        manifests.write(
            self.workdir / "manifests", NODE, placement=placement, nodes_yaml=self.cluster.manifests()
        )
        print(f"cluster in a box: {len(self.cluster.nodes)} node(s), pods:")
        for index, spec in enumerate(PODS):
            node = self.node_of(index)
            print(
                f"  {spec.namespace}/{spec.name:<9} {self.addresses[spec.name]!s:<12}"
                f" {self.addresses6[spec.name]!s:<14} on {node.name}"
                f" (netns {node.netns})" + (f"  serving TCP {spec.port}" if spec.port else "")
            )

    def start_agent(self) -> None:
        self.agents = [
            NodeAgent(node, self.workdir, manifests=self.workdir / "manifests", log_level="warning")
            for node in self.cluster.nodes
        ]
        print(
            f"\nstarting {len(self.agents)} agent(s):"
            " meshagent run --manifests ... --node NODE --node-netns NETNS"
        )
        took = start_agents(self.agents)
        print(f"agents ready in {max(took):.1f} s (policies compiled into the kernel of every node)")

    def start_ui(self) -> str:
        """Starts the service map beside the agents, reading the cluster's flows (the relay's with several
        nodes, else the only agent's) and, for the panels' policy trace, the demo's manifests; its URL."""
        command = _meshagent(
            "ui",
            "--server",
            self.flow_server(),
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
        print(f"service map (meshagent ui): {self.ui_url} (flows from {self.flow_server()})")
        return self.ui_url

    # --- traffic and flows -----------------------------------------------------------------------

    def drive_traffic(self) -> None:
        by_name = {spec.name: spec for spec in PODS}
        for cycle in itertools.count():
            # Every other round of calls goes over IPv6: the same policies must give the same outcomes.
            over_ipv6 = cycle % 2 == 1
            addresses = self.addresses6 if over_ipv6 else self.addresses
            for client, server, _ in CALLS:
                spec: DemoPod = by_name[server]
                # A loaded machine can take most of a second to answer even an allowed call across nodes.
                result = self.pods[client].probe("tcp", addresses[server], spec.port, timeout=1.0)
                outcome = f"{client}->{server} {'ok' if result['ok'] else 'blocked'}"
                self.outcomes[outcome + (IPV6_SUFFIX if over_ipv6 else "")] += 1
                if self._stop.wait(0.3):
                    return

    def start_relay(self) -> None:
        """With several nodes, `meshagent relay` serves all their flows as one API, as in a cluster."""
        if len(self.agents) < 2:
            return
        command = _meshagent(
            "relay",
            *(arg for agent in self.agents for arg in ("--peer", f"{agent.node.name}={agent.server}")),
            "--listen-socket",
            str(self.relay_socket),
        )
        with open(self.workdir / "relay.log", "wb") as log:
            self.relay = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while not self.relay_socket.exists():
            if self.relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the relay did not start: {(self.workdir / 'relay.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)
        print(f"relay ready: every node's flows at unix://{self.relay_socket}")

    def flow_server(self) -> str:
        """Where the flows of the whole cluster are read: the relay, or the only agent."""
        return f"unix://{self.relay_socket}" if self.relay is not None else self.agents[0].server

    def show_flows(self) -> subprocess.Popen[str]:
        many = ["--print-node-name"] if len(self.agents) > 1 else []
        return subprocess.Popen(
            _meshagent(
                "flows",
                "--server",
                self.flow_server(),
                "--follow",
                "--print-policy-names",
                *many,
                "--type",
                "policy-verdict",
            ),
            text=True,
        )

    def summary(self) -> dict[str, int]:
        result = subprocess.run(
            _meshagent("flows", "--server", self.flow_server(), "--all", "-o", "json"),
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
            print("\ntraffic (cycling): " + "; ".join(f"{c} -> {s} ({e})" for c, s, e in CALLS))
            print(
                "live policy verdicts (meshagent flows --follow --type policy-verdict --print-policy-names):"
            )
            driver = threading.Thread(target=self.drive_traffic, daemon=True)
            driver.start()
            self.start_relay()
            self.start_ui()  # after the relay: with several nodes the map reads the relay
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
        first = self.agents[0]
        print(
            textwrap_guide(
                first.server, first.metrics_port, first.health_port, self.workdir, first.node.netns
            )
        )
        if len(self.agents) > 1:
            print("  the other nodes' agents:")
            for agent in self.agents[1:]:
                print(
                    f"    {agent.node.name}: --server {agent.server}, metrics 127.0.0.1:{agent.metrics_port},"
                    f" health 127.0.0.1:{agent.health_port}, netns {agent.node.netns}"
                )
        print(f"  the service map: open {self.ui_url} in a browser\n")

    def _report(self, verdicts: dict[str, int]) -> int:
        print("\n== summary")
        for outcome, count in sorted(self.outcomes.items()):
            print(f"  {outcome:<28} x{count}")
        print(f"  flows by verdict: {verdicts}")
        wanted = {
            outcome + suffix
            for outcome in (
                "stray->cart blocked",
                "frontend->cart ok",
                "frontend->db ok",
                "cart->db ok",
                "stray->frontend ok",
            )
            for suffix in ("", IPV6_SUFFIX)
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
        # The map first: it reads the relay (or the agent), which reads the agents.
        for process in (self.ui, self.relay):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for agent in self.agents:
            agent.close()  # SIGTERM with --cleanup: removes its filters and pinned maps
        self.cluster.close()
        # The manifests and the agents' logs: shown while the demo runs, gone with it (a demo run many
        # times would otherwise leave one directory per run behind).
        shutil.rmtree(self.workdir, ignore_errors=True)
        print("cleaned up: pods, node namespaces, underlay, tc filters, pinned maps and files removed")


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
