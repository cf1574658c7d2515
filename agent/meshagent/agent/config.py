"""The agent's configuration: one schema, read from a YAML file, the environment and flags (in rising
precedence), validated with clear errors.

Each setting has one name; in YAML it is written as-is (`node_netns: ...`), in the environment as
MESHAGENT_<NAME> (`MESHAGENT_NODE_NETNS`), as a flag with dashes (`--node-netns`). NODE_NAME, which a
DaemonSet fills from the downward API, also sets `node`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from meshagent.datapath.loader import DEFAULT_PIN_DIR

DEFAULT_OBSERVER_SOCKET = Path("/var/run/meshagent/observer.sock")
SOCKET_LB_DIR = "socket-lb"  # under pin_dir: the socket load-balancer's maps


class ConfigError(ValueError):
    """A setting is missing, unknown or of the wrong type; the message names it and where it came from."""


@dataclass(frozen=True)
class AgentConfig:
    node: str
    manifests: Path | None = None
    kubeconfig: str | None = None
    api_server: str | None = None
    node_netns: str | None = None
    pin_dir: Path = DEFAULT_PIN_DIR
    observer_socket: Path | None = DEFAULT_OBSERVER_SOCKET
    observer_listen: str | None = None
    observer_tls_cert: Path | None = None
    observer_tls_key: Path | None = None
    observer_tls_client_ca: Path | None = None
    observer_insecure: bool = False
    observer_front_process: bool = True  # gRPC and flow encoding in a process of their own
    metrics_listen: str | None = "127.0.0.1:9965"
    health_listen: str | None = "127.0.0.1:9879"
    flow_ring_size: int = 65536
    event_buffer_mib: int = 4  # the kernel's event ring buffer (not pinned: a change keeps the maps)
    # Events one endpoint may send a second and at once (a kernel token bucket; beyond it they are counted
    # as suppressed per endpoint and reported as lost events); 0 is no limit.
    event_rate_per_endpoint: int = 200_000
    event_burst_per_endpoint: int = 20_000
    export_file: Path | None = None
    export_max_bytes: int = 50 * 1024 * 1024
    enable_policy: bool = True
    enable_flows: bool = True
    enable_socket_lb: bool = False
    socket_lb_cgroup: Path | None = None  # default: <cgroup2 mount>/kubepods.slice, the pods' parent
    enable_sockmap: bool = False
    manifests_poll_seconds: float = 0.5
    cleanup_on_exit: bool = False
    log_format: str = "auto"  # auto | json | text
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not self.node:
            raise ConfigError("node is required (--node, MESHAGENT_NODE or NODE_NAME)")
        if self.manifests is not None and (self.kubeconfig or self.api_server):
            raise ConfigError("manifests and kubeconfig/api_server are two sources: choose one")
        if self.flow_ring_size < 1:
            raise ConfigError("flow_ring_size must be at least 1")
        mib = self.event_buffer_mib
        if not 1 <= mib <= 256 or mib & (mib - 1):
            raise ConfigError(f"event_buffer_mib must be a power of two from 1 to 256, not {mib}")
        if self.event_rate_per_endpoint < 0 or not 1 <= self.event_burst_per_endpoint <= 10_000_000:
            raise ConfigError(
                "event_rate_per_endpoint must be 0 (no limit) or more, event_burst_per_endpoint 1 to 10000000"
            )
        if bool(self.observer_tls_cert) != bool(self.observer_tls_key):
            raise ConfigError("observer_tls_cert and observer_tls_key go together")
        if self.observer_listen and not self.observer_tls_cert and not self.observer_insecure:
            raise ConfigError("observer_listen needs TLS (observer_tls_cert/key) or observer_insecure: true")
        if self.enable_sockmap and not self.enable_socket_lb:
            raise ConfigError("enable_sockmap needs enable_socket_lb")
        if self.log_format not in ("auto", "json", "text"):
            raise ConfigError(f"log_format must be auto, json or text, not {self.log_format!r}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, not {self.log_level!r}")

    @property
    def source_name(self) -> str:
        return "directory" if self.manifests is not None else "kubernetes"


_FIELDS = {f.name: f for f in fields(AgentConfig)}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, value: Any, origin: str) -> Any:
    kind = str(_FIELDS[name].type)
    if value is None or (isinstance(value, str) and value == "" and "None" in kind):
        return None
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected true or false")
        if kind.startswith("int"):
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("Path"):
            return Path(str(value))
        if not isinstance(value, str | int | float):
            raise ValueError("expected a string")
        return str(value)
    except ValueError as err:
        raise ConfigError(f"{name} from {origin}: {err} (got {value!r})") from err


def load_config(
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> AgentConfig:
    """Builds the configuration; `flags` holds only the flags given (None values are ignored)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config file {config_file}: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file}: expected a mapping of settings")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in _FIELDS:
                raise ConfigError(f"config file {config_file}: unknown setting {key!r}")
            values[name] = _convert(name, value, f"config file {config_file}")
    environ = os.environ if environ is None else environ
    if environ.get("NODE_NAME"):
        values["node"] = environ["NODE_NAME"]
    for name in _FIELDS:
        env_name = f"MESHAGENT_{name.upper()}"
        if env_name in environ:
            values[name] = _convert(name, environ[env_name], f"${env_name}")
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _convert(name, value, f"--{name.replace('_', '-')}")
    values.setdefault("node", "")
    try:
        return AgentConfig(**values)
    except TypeError as err:
        raise ConfigError(str(err)) from err
