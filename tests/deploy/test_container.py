"""The DaemonSet's container runs what the code accepts: its command parses with the real CLI parser, the
ConfigMap loads with the real config loader (with the environment the pod gets), and the probes, ports and
mounts agree with the settings that load."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

import click
import pytest
from meshagent.agent.config import AgentConfig
from meshagent.agent.health import HealthServer
from meshagent.cli import run as run_command
from meshagent.datapath.loader import BUNDLED_HEADERS_ENV, header_sets
from meshagent.datapath.program_text import BPF_DIR
from meshagent.observer.listen_address import split_listen_address

from tests.cliparse import parse, run_config
from tests.deploy.manifests import DEPLOY, REPO, Obj, agent_container, agent_manifests, containers, one

NODE = "node-a"


def command_line(container: Obj) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def pod_spec(daemonset: Obj) -> Obj:
    spec: Obj = daemonset["spec"]["template"]["spec"]
    return spec


def pod_environment(container: Obj) -> dict[str, str]:
    """The container's environment as the kubelet would fill it on node NODE."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        field = var["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "spec.nodeName", f"unexpected downward API field {field}"
        env[var["name"]] = NODE
    return env


def mounted_config(tmp_path: Path) -> tuple[Path, AgentConfig]:
    """Writes the ConfigMap's files where the pod would see them (under tmp_path) and loads the config the
    container's command names, with the container's environment."""
    manifests = agent_manifests()
    daemonset, configmap = one("DaemonSet", manifests), one("ConfigMap", manifests)
    agent = agent_container(daemonset)
    argv = command_line(agent)[1:]
    config_path = PurePosixPath(str(parse(argv).params["config_file"]))
    (volume,) = [v for v in pod_spec(daemonset)["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    (mount,) = [m for m in agent["volumeMounts"] if m["name"] == volume["name"]]
    relative = config_path.relative_to(mount["mountPath"])
    assert str(relative) in configmap["data"], f"{relative} is not a key of the ConfigMap"
    local = tmp_path / relative
    local.write_text(configmap["data"][str(relative)])
    # The container's own command line, with the file where this test wrote it.
    local_argv = [str(local) if word == str(config_path) else word for word in argv]
    return local, run_config(local_argv, pod_environment(agent))


def load_config(path: Path, environ: dict[str, str]) -> AgentConfig:
    return run_config(["run", "--config", str(path)], environ)


def test_container_command_parses_with_the_real_cli() -> None:
    daemonset = one("DaemonSet")
    agent = agent_container(daemonset)
    argv = command_line(agent)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get(argv[0]) == "meshagent.cli.main:main", f"{argv[0]} is not the package's CLI"
    ctx = parse(argv[1:])
    assert ctx.command is run_command.run_command


def test_an_unknown_flag_would_be_caught() -> None:
    """The parse in the test above can fail: click refuses a flag the CLI does not have."""
    with pytest.raises(click.UsageError):
        parse(["run", "--config", "/etc/meshagent/config.yaml", "--health-port", "1"])


def test_configmap_loads_with_the_real_loader(tmp_path: Path) -> None:
    _, config = mounted_config(tmp_path)
    assert config.node == NODE  # from NODE_NAME (downward API)
    assert config.source_name == "kubernetes"
    assert config.manifests is None and config.kubeconfig is None and config.api_server is None
    assert not config.cleanup_on_exit  # a rolling update must leave the kernel enforcing


def test_a_bad_setting_in_the_configmap_would_be_caught(tmp_path: Path) -> None:
    from meshagent.agent.config import ConfigError

    path, _ = mounted_config(tmp_path)
    path.write_text(path.read_text() + "flow_ring_sise: 10\n")
    with pytest.raises(ConfigError, match="flow_ring_sise"):
        load_config(path, {"NODE_NAME": NODE})


@pytest.mark.parametrize("mib", ["3", "0", "512"])
def test_event_buffer_must_be_a_power_of_two_mib(tmp_path: Path, mib: str) -> None:
    from meshagent.agent.config import ConfigError

    path, _ = mounted_config(tmp_path)
    with pytest.raises(ConfigError, match="event_buffer_mib must be a power of two"):
        load_config(path, {"NODE_NAME": NODE, "MESHAGENT_EVENT_BUFFER_MIB": mib})
    ok = load_config(path, {"NODE_NAME": NODE, "MESHAGENT_EVENT_BUFFER_MIB": "16"})
    assert ok.event_buffer_mib == 16


def _host_port(address: str | None) -> tuple[str, int]:
    assert address, "the setting is off"
    return split_listen_address(address)


def test_probes_hit_the_health_server_the_config_starts(tmp_path: Path) -> None:
    _, config = mounted_config(tmp_path)
    host, port = _host_port(config.health_listen)
    agent = agent_container(one("DaemonSet"))
    probes = {name: agent[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    for name, probe in probes.items():
        assert probe["port"] == port, f"{name} probes port {probe['port']}, the agent listens on {port}"
        # With hostNetwork the kubelet reaches a loopback listener only when the probe names loopback.
        assert probe.get("host", "") == host or host in ("0.0.0.0", ""), name
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"

    # The paths answer as the probes expect, from the real health server: ready follows the agent's state.
    ready = False
    server = HealthServer("127.0.0.1:0", ready=lambda: ready, status=dict)
    server.start()
    try:

        def status_of(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as resp:
                    json.load(resp)
                    return int(resp.status)
            except urllib.error.HTTPError as err:
                return err.code

        assert {name: status_of(p["path"]) for name, p in probes.items()} == {
            "startupProbe": 200,
            "livenessProbe": 200,
            "readinessProbe": 503,
        }
        ready = True
        assert status_of(probes["readinessProbe"]["path"]) == 200
    finally:
        server.stop()


def test_metrics_port_service_and_config_agree(tmp_path: Path) -> None:
    _, config = mounted_config(tmp_path)
    host, port = _host_port(config.metrics_listen)
    assert host == "", "the Service reaches the agent on the node's addresses of both families"
    manifests = agent_manifests()
    daemonset, service = one("DaemonSet", manifests), one("Service", manifests)
    ports = {p["name"]: p for p in agent_container(daemonset)["ports"]}
    assert ports["metrics"]["containerPort"] == port
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ("metrics", port)
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["metadata"]["namespace"] == daemonset["metadata"]["namespace"]


def _mount_of(container: Obj, path: PurePosixPath) -> Obj:
    """The volume mount that holds `path` (the deepest one)."""
    holding = [
        m
        for m in container["volumeMounts"]
        if path == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in path.parents
    ]
    assert holding, f"nothing is mounted at or above {path}"
    return max(holding, key=lambda m: len(m["mountPath"]))


def test_state_lives_on_host_paths_the_daemonset_mounts(tmp_path: Path) -> None:
    _, config = mounted_config(tmp_path)
    daemonset = one("DaemonSet")
    agent = agent_container(daemonset)
    volumes = {v["name"]: v for v in pod_spec(daemonset)["volumes"]}

    def host_path_of(path: PurePosixPath) -> tuple[Obj, str]:
        mount = _mount_of(agent, path)
        volume = volumes[mount["name"]]
        assert "hostPath" in volume, f"{path} is on volume {mount['name']}, not on the host"
        return mount, volume["hostPath"]["path"]

    # Pinned maps on the host's bpffs, seen by the agent when the init container mounts it there.
    mount, host = host_path_of(PurePosixPath(str(config.pin_dir)))
    assert host == "/sys/fs/bpf" and mount["mountPropagation"] == "HostToContainer"
    init_mounts = [m for c in pod_spec(daemonset)["initContainers"] for m in c["volumeMounts"]]
    assert any(m["name"] == mount["name"] and m["mountPropagation"] == "Bidirectional" for m in init_mounts)
    # The observer socket where a person on the node finds it.
    assert config.observer_socket is not None
    _, host = host_path_of(PurePosixPath(str(config.observer_socket)).parent)
    assert host == "/var/run/meshagent"
    # The node's WireGuard private key, kept across pod restarts.
    _, host = host_path_of(PurePosixPath(str(config.state_dir)))
    assert host == "/var/lib/meshagent"
    # No kernel headers from the host: the image carries its own (test_image.py runs it without them).
    for path in (PurePosixPath("/lib/modules"), PurePosixPath("/usr/src")):
        for mount in agent["volumeMounts"]:
            target = PurePosixPath(mount["mountPath"])
            assert target != path and path not in target.parents, f"the agent mounts the host's {path}"


def test_image_points_bcc_at_the_headers_it_carries() -> None:
    """The Dockerfile bundles a header set where the loader is told to look first."""
    text = (DEPLOY / "Dockerfile").read_text()
    env = re.search(rf"{BUNDLED_HEADERS_ENV}=(\S+)", text)
    assert env is not None, f"the Dockerfile does not set {BUNDLED_HEADERS_ENV}"
    assert re.search(rf"kernel-headers\.sh {re.escape(env.group(1))}\b", text), (
        f"nothing bundles headers into {env.group(1)}"
    )
    sets = header_sets({BUNDLED_HEADERS_ENV: env.group(1)}, release="6.1.0-test")
    assert (sets[0].origin, str(sets[0].path)) == ("bundled", env.group(1))
    assert sets[-1].origin == "host"


def test_pod_spec_is_consistent() -> None:
    daemonset = one("DaemonSet")
    spec = pod_spec(daemonset)
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {v["name"] for v in spec["volumes"]}
    mounted = {m["name"] for c in containers(daemonset) for m in c.get("volumeMounts", [])}
    assert mounted == names, f"unmounted volumes {names - mounted}, undefined {mounted - names}"
    for container in containers(daemonset):
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), container["name"]
        assert "memory" in resources["limits"], container["name"]
    assert spec["hostNetwork"] is True
    assert {"operator": "Exists"} in spec["tolerations"]  # every taint: every node
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert spec["terminationGracePeriodSeconds"] > 0


def test_agent_runs_with_capabilities_not_privileged() -> None:
    agent = agent_container(one("DaemonSet"))
    context = agent["securityContext"]
    assert context.get("privileged") is not True
    assert context["capabilities"]["drop"] == ["ALL"]
    added = set(context["capabilities"]["add"])
    if "SYS_ADMIN" in added:
        # The API server refuses the two together (validation, not schema: test_schemas cannot see it).
        assert context.get("allowPrivilegeEscalation") is not False
    else:
        assert context["allowPrivilegeEscalation"] is False
    # Each is explained in docs/deploy.md.
    text = (REPO / "docs" / "deploy.md").read_text()
    for capability in added:
        assert f"CAP_{capability}" in text, f"docs/deploy.md does not explain CAP_{capability}"


def test_dockerfile_runs_what_the_daemonset_runs() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    instructions = [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines
    ]
    (base,) = [arg for op, arg in instructions if op == "FROM"]
    assert base.startswith("debian:bookworm")
    run_text = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "python3-bpfcc" in run_text
    assert "--system-site-packages" in run_text  # so that Debian's bcc bindings import
    assert not any(word in ("bcc", "bcc==") for word in shlex.split(run_text)), (
        "PyPI's bcc is another library"
    )
    for op, arg in instructions:
        if op == "COPY":
            for source in shlex.split(arg)[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    # The BPF C sources are read from <source tree>/bpf at run time, so the image installs the package in
    # editable mode from a tree that has bpf/ beside agent/.
    assert BPF_DIR.resolve() == (REPO / "bpf").resolve()
    (workdir,) = [arg for op, arg in instructions if op == "WORKDIR"]
    copied = {shlex.split(arg)[-1].rstrip("/") for op, arg in instructions if op == "COPY"}
    assert {"agent", "bpf"} <= copied
    assert f"pip install --no-cache-dir -e {workdir}" in run_text
    (cmd,) = [arg for op, arg in instructions if op == "CMD"]
    assert json.loads(cmd) == command_line(agent_container(one("DaemonSet")))
