"""Running clients inside the test cgroup and a pod's network namespace, and building Kubernetes objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshagent.testing.topology import Pod

CLIENT = str(Path(__file__).with_name("client.py"))


def _enter_cgroup(cgroup: Path) -> Callable[[], None]:
    def place() -> None:
        # In the child, before exec: join the cgroup while /sys is still the host's (ip netns exec
        # remounts /sys and would hide the cgroup2 mount). Children inherit the cgroup.
        with open(cgroup / "cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))

    return place


def client_argv(pod: Pod, *args: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{pod.netns}", sys.executable, CLIENT, *args]


def run_client(pod: Pod, *args: str, cgroup: Path | None, timeout: float = 60.0) -> dict[str, Any]:
    """Runs client.py in the pod's network namespace, inside `cgroup` (None: outside any test cgroup)."""
    result = subprocess.run(
        client_argv(pod, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_enter_cgroup(cgroup) if cgroup is not None else None,
    )
    try:
        parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as err:
        raise AssertionError(f"client failed: {result.stdout} {result.stderr}") from err
    return parsed


def start_client(pod: Pod, *args: str, cgroup: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        client_argv(pod, *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_enter_cgroup(cgroup),
    )


def accepted(log: Path, client: Pod, *, ipv6: bool = False) -> int:
    """Connections (TCP) or datagrams (UDP) a backend's echo server logged from the client (from its IPv6
    address with `ipv6`)."""
    if not log.exists():
        return 0
    source = client.ipv6 if ipv6 else client.ip
    assert source is not None, f"pod {client.name} has no IPv6 address"
    return sum(
        1 for line in log.read_text().splitlines() if line.split()[1].rpartition(":")[0] == str(source)
    )


def service(name: str, cluster_ip: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports, **spec},
    }


def endpoint_slice(
    service_name: str,
    ports: list[dict[str, Any]],
    endpoints: list[tuple[str, dict[str, bool]]],
    *,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-{address_type.lower()}",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": address_type,
        "ports": ports,
        "endpoints": [{"addresses": [ip], "conditions": conditions} for ip, conditions in endpoints],
    }


def tcp_route(name: str, parent: str, port: int, backends: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1alpha2",
        "kind": "TCPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": port}],
            "rules": [
                {"backendRefs": [{"name": svc, "port": port, "weight": weight} for svc, weight in backends]}
            ],
        },
    }
