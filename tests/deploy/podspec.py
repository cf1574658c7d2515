"""The DaemonSet's pod spec as `podman run` arguments, field by field, the way a kubelet would run it.

Every field of a container or of the pod spec is either translated, or known not to matter on one node
(scheduling, the API identity), or refused: a field this module does not know raises UnknownField, so a
new security setting in deploy/daemonset.yaml cannot be silently left out of the image test.

Host paths are the one thing re-rooted: a test must not write the production pin directory or the
node's run directory, so each hostPath volume is given a place chosen by the test (`host_paths`); a
hostPath without one is refused as well.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

# What kubelets do with these does not change how the container runs on one node.
SCHEDULING_FIELDS = {"dnsPolicy", "priorityClassName", "tolerations", "serviceAccountName"}
POD_FIELDS = {
    *SCHEDULING_FIELDS,
    "hostNetwork",
    "terminationGracePeriodSeconds",
    "initContainers",
    "containers",
    "volumes",
}
CONTAINER_FIELDS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "ports",
    "startupProbe",
    "livenessProbe",
    "readinessProbe",
    "resources",
    "securityContext",
    "volumeMounts",
}
SECURITY_FIELDS = {
    "privileged",
    "allowPrivilegeEscalation",
    "runAsUser",
    "readOnlyRootFilesystem",
    "capabilities",
    "seccompProfile",
    "appArmorProfile",
}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
MOUNT_FIELDS = {"name", "mountPath", "readOnly", "mountPropagation"}
# Kubernetes' propagation modes as the container runtimes implement them.
PROPAGATION = {None: "rprivate", "None": "rprivate", "HostToContainer": "rslave", "Bidirectional": "rshared"}


class UnknownField(ValueError):
    """A field of the spec that this translation does not handle: the test would not run it as written."""


def _only(obj: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = set(obj) - known
    if unknown:
        raise UnknownField(f"{where}: {sorted(unknown)} not handled by tests/deploy/podspec.py")


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (768Mi, 1G, 512) in bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def cpus(quantity: str) -> str:
    """A Kubernetes CPU quantity ("1", "100m") as podman's --cpus value."""
    if quantity.endswith("m"):
        return str(int(quantity[:-1]) / 1000)
    return str(float(quantity))


@dataclass(frozen=True)
class Node:
    """Where the pod runs: the node's name (downward API), its network namespace (hostNetwork), the
    places given to hostPath volumes, and a directory for the pod's other volumes."""

    name: str
    netns_path: Path
    host_paths: Mapping[str, Path]
    pod_dir: Path


@dataclass
class Container:
    name: str
    options: list[str]  # `podman run` options
    command: list[str]  # the image and the container's args
    probes: dict[str, Obj] = field(default_factory=dict)

    def argv(self, *extra_options: str) -> list[str]:
        return [*self.options, *extra_options, *self.command]


def _security(context: Obj, name: str) -> list[str]:
    _only(context, SECURITY_FIELDS, f"{name}.securityContext")
    args: list[str] = []
    if context.get("privileged"):
        args.append("--privileged")
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if "runAsUser" in context:
        args += ["--user", str(context["runAsUser"])]
    if context.get("readOnlyRootFilesystem"):
        # Only what the spec mounts is writable: podman would otherwise add tmpfs on /run, /tmp, /var/tmp.
        args += ["--read-only", "--read-only-tmpfs=false"]
    capabilities = context.get("capabilities") or {}
    _only(capabilities, {"add", "drop"}, f"{name}.securityContext.capabilities")
    for cap in capabilities.get("drop", []):
        args += ["--cap-drop", cap]
    for cap in capabilities.get("add", []):
        args += ["--cap-add", cap]
    for key, option in (("seccompProfile", "seccomp"), ("appArmorProfile", "apparmor")):
        profile = context.get(key)
        if profile is None or profile["type"] == "RuntimeDefault":
            continue
        if profile["type"] != "Unconfined":
            raise UnknownField(f"{name}.securityContext.{key}: type {profile['type']}")
        args += ["--security-opt", f"{option}=unconfined"]
    return args


def _resources(resources: Obj, name: str) -> list[str]:
    _only(resources, {"requests", "limits"}, f"{name}.resources")
    limits = resources.get("limits") or {}
    _only(limits, {"cpu", "memory"}, f"{name}.resources.limits")
    args = []
    if "cpu" in limits:
        args += ["--cpus", cpus(str(limits["cpu"]))]
    if "memory" in limits:
        args += ["--memory", str(memory_bytes(str(limits["memory"])))]
    return args  # requests only place the pod


def _env(env: list[Obj], node: Node, name: str) -> list[str]:
    args = []
    for var in env:
        if "value" in var:
            value = str(var["value"])
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            if path != "spec.nodeName":
                raise UnknownField(f"{name}.env {var['name']}: downward API field {path}")
            value = node.name
        args += ["--env", f"{var['name']}={value}"]
    return args


def _volume_sources(spec: Obj, node: Node) -> dict[str, Obj]:
    """volume name -> how to mount it: {"type": "bind", "src": ...} or {"type": "tmpfs", ...}."""
    sources: dict[str, Obj] = {}
    for volume in spec.get("volumes", []):
        name = volume["name"]
        if "hostPath" in volume:
            host = volume["hostPath"]
            if host["path"] not in node.host_paths:
                raise UnknownField(f"volume {name}: hostPath {host['path']} has no place in this test")
            path = node.host_paths[host["path"]]
            if host.get("type") == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif host.get("type") == "Directory" and not path.is_dir():
                raise FileNotFoundError(f"volume {name}: hostPath {path} is not a directory")
            sources[name] = {"type": "bind", "src": path}
        elif "configMap" in volume:
            # The kubelet writes each key of the ConfigMap as a file; the test puts them in pod_dir/<name>.
            path = node.pod_dir / "configmaps" / name
            if not path.is_dir():
                configmap = volume["configMap"]["name"]
                raise FileNotFoundError(f"volume {name}: write ConfigMap {configmap} to {path} first")
            sources[name] = {"type": "bind", "src": path}
        elif "emptyDir" in volume:
            empty = volume["emptyDir"]
            if empty.get("medium") == "Memory":
                size = memory_bytes(str(empty.get("sizeLimit", "64Mi")))
                sources[name] = {"type": "tmpfs", "size": size}
            else:
                path = node.pod_dir / "empty-dirs" / name
                path.mkdir(parents=True, exist_ok=True)
                sources[name] = {"type": "bind", "src": path}
        else:
            raise UnknownField(f"volume {name}: {sorted(set(volume) - {'name'})}")
    return sources


def _mounts(container: Obj, sources: dict[str, Obj], name: str) -> list[str]:
    args = []
    for mount in container.get("volumeMounts", []):
        _only(mount, MOUNT_FIELDS, f"{name}.volumeMounts {mount['name']}")
        source = sources[mount["name"]]
        if source["type"] == "tmpfs":
            args += ["--mount", f"type=tmpfs,dst={mount['mountPath']},tmpfs-size={source['size']}"]
            continue
        options = [f"type=bind,src={source['src']},dst={mount['mountPath']}"]
        if mount.get("readOnly"):
            options.append("ro=true")
        options.append(f"bind-propagation={PROPAGATION[mount.get('mountPropagation')]}")
        args += ["--mount", ",".join(options)]
    return args


def containers(
    pod_spec: Obj, node: Node, *, image: str, prefix: str
) -> tuple[list[Container], list[Container]]:
    """(init containers, containers) of `pod_spec`, each as `podman run` arguments; `image` replaces the
    spec's image name with the locally built one."""
    _only(pod_spec, POD_FIELDS, "pod spec")
    if not pod_spec.get("hostNetwork"):
        raise UnknownField("pod spec: only hostNetwork pods run in the test node's namespace")
    sources = _volume_sources(pod_spec, node)
    grace = int(pod_spec.get("terminationGracePeriodSeconds", 30))

    def one(container: Obj) -> Container:
        name = container["name"]
        _only(container, CONTAINER_FIELDS, f"container {name}")
        if container.get("imagePullPolicy", "IfNotPresent") == "Always":
            raise UnknownField(f"{name}: imagePullPolicy Always needs a registry")
        options = [
            "--name", f"{prefix}-{name}",
            "--pull", "never",  # IfNotPresent, and the image is present: built locally
            "--network", f"ns:{node.netns_path}",
            "--stop-timeout", str(grace),
            *_security(container.get("securityContext") or {}, name),
            *_resources(container.get("resources") or {}, name),
            *_env(container.get("env") or [], node, name),
            *_mounts(container, sources, name),
        ]  # fmt: skip
        if "command" in container:
            options += ["--entrypoint", json.dumps(container["command"])]
        probes = {key: container[key] for key in PROBES if key in container}
        return Container(name, options, [image, *container.get("args", [])], probes)

    return [one(c) for c in pod_spec.get("initContainers", [])], [one(c) for c in pod_spec["containers"]]
