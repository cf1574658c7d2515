"""The agent's configuration: one schema (`AgentConfig`), its defaults and the checks across settings.

Each setting has one name; in a YAML file it is written as-is (`node_netns: ...`), in the environment as
MESHAGENT_<NAME> (`MESHAGENT_NODE_NETNS`), as a flag of `meshagent run` with dashes (`--node-netns`).
NODE_NAME, which a DaemonSet fills from the downward API, also sets `node`. The command line
(`meshagent.cli.run`) reads the three, the file being the defaults; this module reads only the file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from meshagent.model.kernel_state import DEFAULT_PIN_DIR
from meshagent.observer.limits import DEFAULT_LIMITS, LimitsError, ServerLimits
from meshagent.observer.listen import group_id
from meshagent.wireguard.modes import MODES

DEFAULT_STATE_DIR = Path("/var/lib/meshagent")

DEFAULT_OBSERVER_SOCKET = Path("/var/run/meshagent/observer.sock")
SOCKET_LB_DIR = "socket-lb"  # under pin_dir: the socket load-balancer's maps
ENV_PREFIX = "MESHAGENT_"
LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


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
    # Events one endpoint may send a second and at once (a kernel token bucket; beyond it they are counted
    # as suppressed per endpoint and reported as lost events); 0 is no limit.
    event_rate_per_endpoint: int = 200_000
    event_burst_per_endpoint: int = 20_000
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
    # Node-to-node encryption with WireGuard (agent/encryption.py): off | permissive | strict.
    encryption: str = "off"
    wireguard_port: int = 51871
    wireguard_mtu: int = 0  # 0: the underlay's MTU less what WireGuard adds
    state_dir: Path = DEFAULT_STATE_DIR  # the node's private key and run-time requests, owner-only

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
        for name in ("observer_socket_group", "export_file_group"):
            group = getattr(self, name)
            if group is not None:
                try:
                    group_id(group)
                except ValueError as err:
                    raise ConfigError(f"{name}: {err}") from err
        if self.enable_sockmap and not self.enable_socket_lb:
            raise ConfigError("enable_sockmap needs enable_socket_lb")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be auto, json or text, not {self.log_format!r}")
        if self.encryption not in MODES:
            raise ConfigError(f"encryption must be off, permissive or strict, not {self.encryption!r}")
        if not 1 <= self.wireguard_port <= 65535:
            raise ConfigError(f"wireguard_port must be 1 to 65535, not {self.wireguard_port}")
        if self.wireguard_mtu and not 1280 <= self.wireguard_mtu <= 65535:
            raise ConfigError(f"wireguard_mtu must be 0 (auto) or 1280 to 65535, not {self.wireguard_mtu}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"log_level must be debug, info, warning or error, not {self.log_level!r}")

    @property
    def source_name(self) -> str:
        return "directory" if self.manifests is not None else "kubernetes"


SETTINGS = tuple(f.name for f in fields(AgentConfig))


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a YAML file, by setting name (`-` and `_` alike); values as written.

    A null value stays None: it means "off" for a setting that has a default."""
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings")
    values: dict[str, Any] = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name not in SETTINGS:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        values[name] = value
    return values


def parse_limits(value: Any) -> ServerLimits:
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
