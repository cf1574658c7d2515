"""The translation of the DaemonSet's pod spec into podman arguments (tests/deploy/podspec.py), which the
image test relies on to run the image exactly as written: each setting becomes its runtime option, and a
field it does not know is refused rather than dropped."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.deploy.manifests import agent_container, one
from tests.deploy.podspec import Node, UnknownField, containers, cpus, memory_bytes


def node_for(tmp_path: Path) -> Node:
    (tmp_path / "pod" / "configmaps" / "config").mkdir(parents=True)
    return Node(
        name="node-x",
        netns_path=Path("/run/netns/node-x"),
        host_paths={
            "/sys/fs/bpf": tmp_path / "bpf",
            "/sys/fs/cgroup": tmp_path / "cgroup",
            "/var/run/meshagent": tmp_path / "run",
            "/var/lib/meshagent": tmp_path / "state",
        },
        pod_dir=tmp_path / "pod",
    )


def pod_spec() -> dict[str, object]:
    spec: dict[str, object] = copy.deepcopy(one("DaemonSet")["spec"]["template"]["spec"])
    return spec


def pairs(options: list[str]) -> list[tuple[str, str]]:
    return [(options[i], options[i + 1]) for i in range(len(options) - 1) if options[i].startswith("--")]


def test_quantities() -> None:
    assert memory_bytes("768Mi") == 768 << 20 and memory_bytes("1G") == 10**9 and memory_bytes("512") == 512
    assert cpus("1") == "1.0" and cpus("100m") == "0.1"


def test_the_agent_container_gets_every_setting_of_the_spec(tmp_path: Path) -> None:
    (tmp_path / "cgroup").mkdir()
    inits, (agent,) = containers(pod_spec(), node_for(tmp_path), image="img:1", prefix="t")
    spec = agent_container(one("DaemonSet"))
    options = pairs(agent.options)
    context = spec["securityContext"]
    assert ("--cap-drop", "ALL") in options
    assert {v for k, v in options if k == "--cap-add"} == set(context["capabilities"]["add"])
    assert ("--user", str(context["runAsUser"])) in options
    assert "--read-only" in agent.options and "--read-only-tmpfs=false" in agent.options
    assert "--privileged" not in agent.options
    assert ("--security-opt", "seccomp=unconfined") in options
    assert ("--security-opt", "apparmor=unconfined") in options
    assert ("--network", "ns:/run/netns/node-x") in options
    assert ("--env", "NODE_NAME=node-x") in options
    assert ("--memory", str(768 << 20)) in options and ("--cpus", "1.0") in options
    assert (("--security-opt", "no-new-privileges") in options) == (
        context.get("allowPrivilegeEscalation") is False
    )
    mounts = {v for k, v in options if k == "--mount"}
    assert f"type=bind,src={tmp_path / 'bpf'},dst=/sys/fs/bpf,bind-propagation=rslave" in mounts
    assert f"type=bind,src={tmp_path / 'run'},dst=/var/run/meshagent,bind-propagation=rprivate" in mounts
    assert (
        f"type=bind,src={tmp_path / 'cgroup'},dst=/run/meshagent/cgroupv2,ro=true,bind-propagation=rslave"
        in mounts
    )
    assert f"type=tmpfs,dst=/tmp,tmpfs-size={64 << 20}" in mounts
    assert ("--entrypoint", json.dumps(spec["command"])) in options
    assert agent.command == ["img:1", *spec["args"]]
    assert set(agent.probes) == {"startupProbe", "livenessProbe", "readinessProbe"}
    # The init container mounts bpffs for the host: privileged, with its mount shared back.
    (init,) = inits
    assert "--privileged" in init.options
    assert f"type=bind,src={tmp_path / 'bpf'},dst=/sys/fs/bpf,bind-propagation=rshared" in init.options


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        (lambda s: s["containers"][0]["securityContext"].update(seLinuxOptions={"type": "spc_t"}), "seLinux"),
        (lambda s: s["containers"][0].update(workingDir="/"), "workingDir"),
        (lambda s: s.update(hostPID=True), "hostPID"),
        (lambda s: s["volumes"].append({"name": "m", "hostPath": {"path": "/lib/modules"}}), "/lib/modules"),
        (lambda s: s["containers"][0]["volumeMounts"][0].update(subPath="x"), "subPath"),
        (lambda s: s["containers"][0]["resources"]["limits"].update({"hugepages-2Mi": "1Gi"}), "hugepages"),
    ],
)
def test_a_field_it_does_not_handle_is_refused(tmp_path: Path, change: object, refused: str) -> None:
    spec = pod_spec()
    assert callable(change)
    change(spec)
    (tmp_path / "cgroup").mkdir()
    with pytest.raises(UnknownField, match=refused):
        containers(spec, node_for(tmp_path), image="img:1", prefix="t")
