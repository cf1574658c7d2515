"""The agent does its job with exactly the capabilities the DaemonSet grants: a real agent, started with
the DaemonSet's capability set as its bounding set (and no_new_privs when allowPrivilegeEscalation is
false), a read-only root file system (readOnlyRootFilesystem) and the ConfigMap's settings, loads and pins
its maps, attaches to a pod's veth and drops real packets that a policy denies.

Everything happens in network namespaces this test creates (a node and a pod), under a pin directory of
its own; all of it is removed afterwards, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import agent_container, agent_manifests, one

pytestmark = pytest.mark.kernel

NODE_IP, POD_IP = "10.213.0.1", "10.213.0.2"
CAP_BITS = {"NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}
MESHAGENT = Path(sys.executable).with_name("meshagent")

CLUSTER = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: shop, labels: {{app: web}}}}
spec: {{nodeName: node-a}}
status: {{podIP: {POD_IP}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-ingress, namespace: shop}}
spec: {{podSelector: {{}}}}
"""


READ_ONLY_ROOT = (
    'mount --bind /tmp /tmp && mount --bind /var/tmp /var/tmp && mount -o remount,bind,ro / && exec "$@"'
)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=check)


def capabilities_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


def root_is_read_only(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":  # mount point; fields[5] holds the per-mount options
            return "ro" in fields[5].split(",")
    raise AssertionError("no root mount")


def bounding_set() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapBnd")


@contextlib.contextmanager
def node_with_pod() -> Iterator[tuple[str, str, str]]:
    """A node namespace and a pod namespace joined by a routed veth (as a CNI sets them up)."""
    tag = uuid.uuid4().hex[:6]
    node, pod, veth = f"ma-dn-{tag}", f"ma-dp-{tag}", f"vdp{tag}"
    try:
        sh("ip", "netns", "add", node)
        sh("ip", "netns", "add", pod)
        for ns in (node, pod):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod)
        sh("ip", "-n", node, "addr", "add", f"{NODE_IP}/32", "dev", veth)
        sh("ip", "-n", node, "link", "set", veth, "up")
        sh("ip", "-n", pod, "addr", "add", f"{POD_IP}/32", "dev", "eth0")
        sh("ip", "-n", pod, "link", "set", "eth0", "up")
        sh("ip", "-n", pod, "route", "add", f"{NODE_IP}/32", "dev", "eth0")
        sh("ip", "-n", node, "route", "add", f"{POD_IP}/32", "dev", veth, "scope", "link")
        yield node, pod, veth
    finally:
        sh("ip", "netns", "del", pod, check=False)
        sh("ip", "netns", "del", node, check=False)


def ping(netns: str, address: str) -> bool:
    """True when any of three echo requests is answered (a loaded machine may be slow to answer one)."""
    run = ("ip", "netns", "exec", netns, "ping", "-c", "3", "-i", "0.3", "-W", "2", address)
    return sh(*run, check=False).returncode == 0


def ready(netns: str, port: int) -> bool:
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=1)"
    run = ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", probe]
    return subprocess.run(run, capture_output=True, timeout=10).returncode == 0


def test_agent_enforces_with_only_the_daemonsets_capabilities(tmp_path: Path) -> None:
    for tool in ("setpriv", "nsenter", "unshare", "ip", "ping"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not os.path.ismount("/sys/fs/bpf"):
        # What the DaemonSet's init container does on a host without bpffs.
        sh("mount", "-t", "bpf", "bpf", "/sys/fs/bpf")
    manifests = agent_manifests()
    agent = agent_container(one("DaemonSet", manifests))
    granted = agent["securityContext"]["capabilities"]["add"]
    expected = (
        sum(1 << CAP_BITS[c] for c in granted) & bounding_set()
    )  # this host may lack some (SYS_RESOURCE)
    config = tmp_path / "config.yaml"
    config.write_text(one("ConfigMap", manifests)["data"]["config.yaml"])
    health_port = int(yaml.safe_load(config.read_text())["health_listen"].rpartition(":")[2])
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "cluster.yaml").write_text(CLUSTER)
    pin_dir = Path(f"/sys/fs/bpf/meshagent-deploytest-{uuid.uuid4().hex[:8]}")
    log = tmp_path / "agent.log"

    with node_with_pod() as (node, pod, veth):
        assert ping(node, POD_IP), "the namespaces do not pass traffic before the agent"
        bounding = "-all," + ",".join(f"+{c.lower()}" for c in granted)
        # allowPrivilegeEscalation: false is no_new_privs for the container's processes.
        escalation = agent["securityContext"].get("allowPrivilegeEscalation", True)
        no_new_privs = [] if escalation else ["--no-new-privs"]
        command = [
            # readOnlyRootFilesystem: a mount namespace of the agent's own where / is read-only and only
            # what the pod has writable stays so (/tmp and /var/tmp are emptyDirs, bpffs its own mount).
            "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", READ_ONLY_ROOT, "sh",
            "nsenter", f"--net=/run/netns/{node}",
            "setpriv", *no_new_privs, f"--bounding-set={bounding}", "--inh-caps=-all",
            str(MESHAGENT), "run", "--config", str(config),
            # Standalone instead of the API server, and test-local paths; everything else is the ConfigMap's.
            "--manifests", str(cluster), "--pin-dir", str(pin_dir),
            "--observer-socket", str(tmp_path / "observer.sock"), "--cleanup", "--log-format", "text",
        ]  # fmt: skip
        with log.open("w") as out:
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NODE_NAME": "node-a", "PYTHONDONTWRITEBYTECODE": "1"},
            )
        try:
            deadline = time.monotonic() + 120
            while not ready(node, health_port):
                assert proc.poll() is None, f"the agent exited: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"not ready in 120 s: {log.read_text()[-2000:]}"
                time.sleep(0.2)
            assert capabilities_of(proc.pid) == expected, "the agent ran with other capabilities than granted"
            assert root_is_read_only(proc.pid), "the agent's root file system is writable"
            # Its observer front process keeps none of them once it listens.
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            fronts = [
                int(c)
                for c in children
                if b"meshagent.observer.frontproc" in Path(f"/proc/{c}/cmdline").read_bytes()
            ]
            assert len(fronts) == 1, "no observer front process"
            assert capabilities_of(fronts[0]) == 0, "the front process kept capabilities"
            pinned = {p.name for p in pin_dir.rglob("ma_*")}  # (under a layout-version directory)
            assert {"ma_endpoints", "ma_ipcache", "ma_policy"} <= pinned, f"pinned: {sorted(pinned)}"
            ingress = sh("ip", "netns", "exec", node, "tc", "filter", "show", "dev", veth, "ingress").stdout
            egress = sh("ip", "netns", "exec", node, "tc", "filter", "show", "dev", veth, "egress").stdout
            assert "ma_from_endpoint" in ingress and "ma_to_endpoint" in egress
            # The pod is isolated for ingress: the node's ping is dropped; the pod's own ping out is allowed
            # and its reply comes back through conntrack.
            assert not ping(node, POD_IP), "a ping denied by policy got through"
            assert ping(pod, NODE_IP), "traffic the policy allows was dropped"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(pin_dir, ignore_errors=True)
    assert not pin_dir.exists()
