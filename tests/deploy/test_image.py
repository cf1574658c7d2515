"""The built image, run under a real OCI runtime (podman with runc) exactly as deploy/daemonset.yaml says:
its init container, then the agent container with the spec's command, environment, user, capabilities,
read-only root file system, resource limits, mounts (bpffs, cgroup2, the run directory, the ConfigMap's
config) and probes, translated field by field by tests/deploy/podspec.py from the file itself.

The pod runs in the node namespace of a test topology (hostNetwork), against a Kubernetes API emulator
listening on that node's loopback, with no kernel headers visible in the container: the image compiles
against the set it carries. It must become ready on its readiness probe, drop what a policy denies in
real packets, serve flows on the mounted socket to `meshagent flows` run outside the container, and,
killed and started again, adopt the pinned maps with no gap in enforcement or in an open connection.

Only the host paths are moved: bpffs to a directory of this test on the host's bpffs, the run directory
to a temporary one. Everything is removed afterwards, even on failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from meshagent.testing.topology import Pod, Topology

from tests.agent.test_agent_e2e import db_policy, pod_manifest
from tests.deploy.manifests import agent_manifests, one
from tests.deploy.podspec import Container, Node, containers
from tests.sources.k8s_emulator import KubeEmulator

pytestmark = [pytest.mark.kernel, pytest.mark.image]

IMAGE = os.environ.get("MESHAGENT_IMAGE", "localhost/meshagent:0.1.0")
NODE = "node-image"
# runc, not crun (crun refuses hosts with the hybrid cgroup layout); cgroupfs: no systemd to ask.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
MESHAGENT = Path(sys.executable).with_name("meshagent")
CONFIG_PIN_DIR = "/sys/fs/bpf/meshagent"  # the ConfigMap's pin_dir, as the container sees it
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:2])} failed: {result.stderr.strip()[-2000:]}")
    return result


def runtime_limits() -> list[str]:
    """Explicit rlimits, as a node's runtime configuration sets them: podman's defaults (and the host's own
    hard limits, above what runc's parent may set) fail here, because raising a limit needs
    CAP_SYS_RESOURCE, which this host's root lacks. Values at or below the host's hard limits."""
    options = []
    for name, which, wanted in (
        ("nofile", resource.RLIMIT_NOFILE, 16384),
        ("nproc", resource.RLIMIT_NPROC, 4096),
    ):
        hard = resource.getrlimit(which)[1]
        value = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        options += ["--ulimit", f"{name}={value}:{value}"]
    return options


def serve_in_netns(emulator: KubeEmulator, netns: str) -> None:
    """Starts the emulator listening on the loopback of `netns` (the node's, which the hostNetwork pod
    shares, as a kubelet's pod reaches its API server). setns(2) moves only the calling thread, so a
    thread of its own enters the namespace, opens the listening socket there, and ends."""
    errors: list[BaseException] = []

    def enter_and_start() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            emulator.start()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=enter_and_start)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def http_status(netns: str, probe: dict[str, object]) -> int | None:
    """The status a kubelet's httpGet probe would see from the node (None: no answer)."""
    url = f"http://{probe.get('host', '127.0.0.1')}:{probe['port']}{probe['path']}"
    code = (
        "import urllib.request, urllib.error, sys\n"
        f"try: print(urllib.request.urlopen({url!r}, timeout=2).status)\n"
        "except urllib.error.HTTPError as e: print(e.code)\n"
        "except OSError: print('none')\n"
    )
    result = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=20,
    )
    answer = result.stdout.strip()
    return int(answer) if answer.isdigit() else None


def allowed(client: Pod, server: Pod, port: int) -> bool:
    return bool(client.probe("tcp", server.ip, port, timeout=1.0)["ok"])


@dataclass
class Pinned:
    """The agent's pinned maps on the host, by name: their inode numbers say whether a restarted agent
    kept them (adopted) or made new ones."""

    maps_root: Path

    def identities(self) -> dict[str, int]:
        return {path.name: path.stat().st_ino for path in self.maps_root.rglob("ma_*")}


@dataclass
class RunningPod:
    node: Node
    agent: Container
    netns: str
    started: float  # monotonic time just before the agent container was started

    @property
    def container(self) -> str:
        return self.agent.options[self.agent.options.index("--name") + 1]

    def start_again(self) -> None:
        self.started = time.monotonic()
        podman("start", self.container)

    def wait_ready(self) -> float:
        """Seconds from the container's start until the readiness probe passes (the startup probe's
        budget at most)."""
        started = self.started
        startup = self.agent.probes["startupProbe"]
        budget = float(startup["periodSeconds"]) * float(startup["failureThreshold"])
        readiness = self.agent.probes["readinessProbe"]["httpGet"]
        while http_status(self.netns, readiness) != 200:
            state = podman("inspect", "--format", "{{.State.Status}}", self.container).stdout.strip()
            assert state == "running", f"the agent container is {state}: {self.logs()[-3000:]}"
            assert time.monotonic() - started < budget, f"not ready in {budget:.0f} s: {self.logs()[-3000:]}"
            time.sleep(0.2)
        return time.monotonic() - started

    def logs(self) -> str:
        result = podman("logs", self.container, check=False)
        return result.stdout + result.stderr


def cluster_objects(pods: dict[str, Pod]) -> list[dict[str, object]]:
    objects: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    ]
    for name, pod in pods.items():
        objects.append(
            yaml.safe_load(pod_manifest(name, "shop", pod.ip, {"app": name}, node=NODE, ipv6=pod.ipv6))
        )
    objects.append(yaml.safe_load(db_policy("[{port: 80}]")))
    return objects


@contextlib.contextmanager
def daemonset_pod(topo: Topology, tmp_path: Path, api_server: str) -> Iterator[RunningPod]:
    """The DaemonSet's pod on the test node: init containers run to completion, then the agent container
    is started (not yet waited for). Removes the containers, the agent's kernel state and its pins."""
    manifests = agent_manifests()
    daemonset, configmap = one("DaemonSet", manifests), one("ConfigMap", manifests)
    tag = uuid.uuid4().hex[:8]
    bpf_root = Path(f"/sys/fs/bpf/meshagent-imagetest-{tag}")
    node = Node(
        name=NODE,
        netns_path=Path(f"/run/netns/{topo.node}"),
        host_paths={
            "/sys/fs/bpf": bpf_root,  # a directory on the host's bpffs, not the production pin root
            "/sys/fs/cgroup": Path("/sys/fs/cgroup"),  # the host's cgroups, read-only in the spec
            "/var/run/meshagent": tmp_path / "run",
            "/var/lib/meshagent": tmp_path / "state",
        },
        pod_dir=tmp_path / "pod",
    )
    (volume,) = [v for v in daemonset["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    config_dir = node.pod_dir / "configmaps" / volume["name"]
    config_dir.mkdir(parents=True)
    for key, text in configmap["data"].items():
        (config_dir / key).write_text(text)
    if not os.path.ismount("/sys/fs/bpf"):
        subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=True)
    names: list[str] = []
    limits = runtime_limits()
    try:
        # Inside the try: translating the spec already creates the DirectoryOrCreate host paths.
        spec = daemonset["spec"]["template"]["spec"]
        inits, (agent,) = containers(spec, node, image=IMAGE, prefix=f"ma-{tag}")
        names = [c.options[c.options.index("--name") + 1] for c in [*inits, agent]]
        for init in inits:
            result = podman("run", "--rm", *init.argv(*limits), check=False, timeout=120)
            assert result.returncode == 0, f"init container {init.name}: {result.stderr[-2000:]}"
        # The one setting a kubelet gives a pod besides the spec: where its API server is (in a cluster,
        # KUBERNETES_SERVICE_HOST and a service account token; here the emulator on the node's loopback).
        started = time.monotonic()
        podman("run", "--detach", *agent.argv(*limits, "--env", f"MESHAGENT_API_SERVER={api_server}"))
        yield RunningPod(node=node, agent=agent, netns=topo.node, started=started)
    finally:
        for name in names:
            podman("rm", "--force", "--time", "0", name, check=False)
        # cleanup_on_exit is off in the ConfigMap (a restart must keep enforcing): uninstall as a node's
        # operator would.
        subprocess.run(
            [
                str(MESHAGENT),
                "uninstall",
                "--pin-dir",
                str(bpf_root / "meshagent"),
                "--node-netns",
                topo.node,
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(bpf_root, ignore_errors=True)


def flows(socket: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [str(MESHAGENT), "flows", "--server", f"unix://{socket}", "--last", "1000", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def seen(records: list[dict[str, object]], source: Pod, destination: Pod, port: int, verdict: str) -> bool:
    for record in records:
        flow = record.get("flow", record)
        assert isinstance(flow, dict)
        ip, l4 = flow.get("IP") or {}, flow.get("l4") or {}
        if (
            flow.get("verdict") == verdict
            and ip.get("source") == str(source.ip)
            and ip.get("destination") == str(destination.ip)
            and port in ((l4.get("TCP") or {}).get(key) for key in ("destinationPort", "destination_port"))
        ):
            return True
    return False


def test_image_runs_as_the_daemonset_enforces_serves_flows_and_restarts_without_gap(tmp_path: Path) -> None:
    for tool in ("podman", "runc", "nsenter"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: make image-test installs it (scripts/image.sh)")
    assert podman("image", "exists", IMAGE, check=False).returncode == 0, f"{IMAGE} is not built: make image"
    emulator = KubeEmulator()
    with Topology() as topo:
        pods = {
            name: topo.add_pod(name, f"10.244.9.{10 * i}") for i, name in enumerate(("web", "db", "other"), 1)
        }
        pods["db"].serve(tcp=(80,))
        web, db, other = pods["web"], pods["db"], pods["other"]
        assert allowed(other, db, 80), "the topology does not pass traffic before the agent"
        serve_in_netns(emulator, topo.node)
        try:
            for obj in cluster_objects(pods):
                emulator.apply(obj)
            with daemonset_pod(topo, tmp_path, emulator.url) as pod:
                first_ready = pod.wait_ready()
                # No kernel headers reach the container: it compiled against the ones it carries.
                release = os.uname().release
                probe = podman(
                    "exec", pod.container, "sh", "-c", f"test -e /lib/modules/{release}", check=False
                )
                assert probe.returncode != 0, "the host's kernel headers are visible in the container"
                assert "compiled endpoint.c against bundled headers" in pod.logs()

                # Enforcement on real packets: the policy lets web reach db on 80, and nothing else.
                assert allowed(web, db, 80), "traffic the policy allows was dropped"
                assert not allowed(other, db, 80), "traffic the policy denies got through"

                # Flows on the mounted socket, read from the node with the real CLI.
                socket = pod.node.host_paths["/var/run/meshagent"] / "observer.sock"
                assert socket.exists(), (
                    f"no observer socket on the host's run directory: {pod.logs()[-2000:]}"
                )
                records = flows(socket)
                assert seen(records, web, db, 80, "FORWARDED"), records[-5:]
                assert seen(records, other, db, 80, "DROPPED"), records[-5:]

                # Killed and started again: enforcement never stops, an open connection never breaks,
                # and the new agent adopts the pinned maps instead of making new ones.
                pinned = Pinned(pod.node.host_paths["/sys/fs/bpf"] / Path(CONFIG_PIN_DIR).name)
                before = pinned.identities()
                assert {"ma_endpoints", "ma_ipcache", "ma_policy"} <= before.keys(), sorted(before)
                steady = web.talk(db.ip, 80, seconds=20.0)
                try:
                    assert steady.stdout is not None and steady.stdout.readline().strip() == "connected"
                    podman("kill", "--signal", "KILL", pod.container)
                    podman("wait", pod.container)  # down for sure before the checks below
                    assert not allowed(other, db, 80), "denied traffic got through while the agent was down"
                    assert allowed(web, db, 80), "allowed traffic stopped while the agent was down"
                    pod.start_again()
                    second_ready = pod.wait_ready()
                    assert not allowed(other, db, 80) and allowed(web, db, 80)
                    out, err = steady.communicate(timeout=60)
                finally:
                    if steady.poll() is None:
                        steady.kill()
                exchanges, failures = (int(x) for x in out.split())
                assert failures == 0 and exchanges > 20, (out, err)
                assert pinned.identities() == before, "the restarted agent did not keep the pinned maps"
                assert "adopted 3 endpoints" in pod.logs()
                size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
                print(
                    f"image {IMAGE}: {size / 1e6:.0f} MB; start to ready {first_ready:.1f} s; "
                    f"killed and started again: ready {second_ready:.1f} s after the start; "
                    f"{exchanges} exchanges on one connection across the restart, {failures} failed"
                )
        finally:
            emulator.stop()
