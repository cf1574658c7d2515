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
from meshagent.observer.limits import DEFAULT_LIMITS, LimitsError, ServerLimits
from meshagent.observer.server import group_id

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
    observer_socket_group: str | None = None  # set: the socket is 0660 and this group's, else 0600
    observer_listen: str | None = None
    observer_tls_cert: Path | None = None
    observer_tls_key: Path | None = None
    observer_tls_client_ca: Path | None = None
    observer_insecure: bool = False
    observer_front_process: bool = True  # gRPC and flow encoding in a process of their own
    # The flow API server's limits (observer/limits.py): a YAML mapping, or name=value,... elsewhere.
    observer_limits: ServerLimits = DEFAULT_LIMITS
    metrics_listen: str | None = "127.0.0.1:9965"
    health_listen: str | None = "127.0.0.1:9879"
    flow_ring_size: int = 65536
    event_buffer_mib: int = 4  # the kernel's event ring buffer (not pinned: a change keeps the maps)
    export_file: Path | None = None
    export_max_bytes: int = 50 * 1024 * 1024
    export_file_group: str | None = None  # set: the export files are 0640 and this group's, else 0600
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
        if bool(self.observer_tls_cert) != bool(self.observer_tls_key):
            raise ConfigError("observer_tls_cert and observer_tls_key go together")
        if self.observer_listen and not self.observer_tls_cert and not self.observer_insecure:
            raise ConfigError("observer_listen needs TLS (observer_tls_cert/key) or observer_insecure: true")
        for name in ("observer_socket_group", "export_file_group"):
            group = getattr(self, name)
            if group is not None:
                try:
                    group_id(group)
                except ValueError as err:
                    raise ConfigError(f"{name}: {err}") from err
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
        if kind.startswith("ServerLimits"):
            return _limits(value)
        if not isinstance(value, str | int | float):
            raise ValueError("expected a string")
        return str(value)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{name} from {origin}: {err} (got {value!r})") from err


def _limits(value: Any) -> ServerLimits:
    """ServerLimits from a mapping (YAML) or "name=value,name=value" (environment, flag); the limits not
    named keep their defaults."""
    if isinstance(value, ServerLimits):
        return value
    if isinstance(value, str):
        pairs: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in value.split(","))):
            key, sep, text = item.partition("=")
            if not sep:
                raise ValueError(f"expected name=value, got {item!r}")
            pairs[key.strip()] = text.strip()
        value = pairs
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of limit names to numbers")
    defaults = DEFAULT_LIMITS.as_dict()
    changes: dict[str, object] = {}
    for key, raw in value.items():
        name = str(key).replace("-", "_")
        if name not in defaults:
            raise ValueError(f"unknown limit {key!r} (known: {', '.join(sorted(defaults))})")
        if isinstance(raw, bool):
            raise ValueError(f"{name} must be a number")
        number = float(raw)
        changes[name] = int(number) if isinstance(defaults[name], int) and number == int(number) else number
        if isinstance(defaults[name], int) and not isinstance(changes[name], int):
            raise ValueError(f"{name} must be a whole number, not {raw!r}")
    try:
        return DEFAULT_LIMITS.replace(**changes)
    except LimitsError as err:
        raise ValueError(str(err)) from err


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
