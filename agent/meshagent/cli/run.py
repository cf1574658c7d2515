"""`meshagent run` (the agent) and `meshagent uninstall` (remove what the agent put in the kernel)."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from meshagent.agent.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    SETTINGS,
    AgentConfig,
    ConfigError,
    env_name,
    parse_limits,
    read_config_file,
)
from meshagent.agent.logs import setup_logging
from meshagent.cli.context import is_verbose
from meshagent.wireguard.modes import MODES

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

# Setting -> (flag, help): every setting of AgentConfig has one. Each also comes from MESHAGENT_<SETTING>
# and from the --config file; the default shown is the schema's.
SETTING_FLAGS: dict[str, tuple[str, str]] = {
    "node": ("--node", "this node's name (also from $NODE_NAME)"),
    "manifests": ("--manifests", "standalone: a directory of Kubernetes YAML to read and watch"),
    "kubeconfig": (
        "--kubeconfig",
        "kubeconfig file (default: in-cluster service account, then ~/.kube/config)",
    ),
    "api_server": ("--api-server", "Kubernetes API URL (tests and local emulators)"),
    "node_netns": ("--node-netns", "network namespace that plays the node (default: the agent's own)"),
    "pin_dir": ("--pin-dir", "where maps are pinned"),
    "observer_socket": ("--observer-socket", "Unix socket of the flow API"),
    "observer_listen": ("--observer-listen", "also serve the flow API on TCP, e.g. 0.0.0.0:4245"),
    "observer_tls_cert": ("--observer-tls-cert", "TLS certificate for --observer-listen"),
    "observer_tls_key": ("--observer-tls-key", "TLS key for --observer-listen"),
    "observer_tls_client_ca": ("--observer-tls-client-ca", "require client certificates signed by this CA"),
    "observer_insecure": ("--observer-insecure", "allow --observer-listen without TLS"),
    "observer_front_process": (
        "--observer-front-process/--no-observer-front-process",
        "serve the flow API from a front process on another core (off: from the agent's own process)",
    ),
    "metrics_listen": ("--metrics-listen", "Prometheus metrics address (empty: off)"),
    "health_listen": ("--health-listen", "/healthz and /readyz address (empty: off)"),
    "observer_socket_group": (
        "--observer-socket-group",
        "group that may read flows from the Unix socket (0660); default: owner only (0600)",
    ),
    "observer_limits": (
        "--observer-limits",
        "flow API server limits as name=value,... (e.g. max_connections=256,idle_timeout_seconds=60)",
    ),
    "flow_ring_size": ("--flow-ring-size", "flows held in memory"),
    "event_buffer_mib": ("--event-buffer-mib", "the kernel's event ring buffer in MiB, a power of two"),
    "event_rate_per_endpoint": (
        "--event-rate-per-endpoint",
        "events one endpoint may send a second (a kernel token bucket); 0: no limit",
    ),
    "event_burst_per_endpoint": (
        "--event-burst-per-endpoint",
        "events one endpoint may send at once above its rate (the token bucket's size)",
    ),
    "export_file": ("--export-file", "also write flows as JSON lines to this file (rotated by size)"),
    "export_max_bytes": ("--export-max-bytes", "size in bytes at which the export file is rotated"),
    "export_file_group": ("--export-file-group", "group that may read the export files (0640)"),
    "enable_policy": ("--policy/--no-policy", "enforce policy (off: flows only)"),
    "enable_flows": ("--flows/--no-flows", "serve flows and metrics"),
    "enable_socket_lb": ("--socket-lb", "translate Service addresses at the socket (cgroup hooks)"),
    "socket_lb_cgroup": ("--socket-lb-cgroup", "cgroup v2 path whose processes get Service translation"),
    "enable_sockmap": ("--sockmap", "splice established local TCP connections socket to socket"),
    "manifests_poll_seconds": (
        "--manifests-poll-seconds",
        "how often to rescan --manifests when its directory cannot be watched",
    ),
    "cleanup_on_exit": (
        "--cleanup",
        "on exit remove our tc filters and pinned maps (default: leave enforcing)",
    ),
    "log_format": ("--log-format", "JSON when not a terminal (auto), json or text"),
    "log_level": ("--log-level", "the lowest level logged"),
    "encryption": ("--encryption", "WireGuard between nodes: off, permissive or strict"),
    "wireguard_port": ("--wireguard-port", "UDP port of the WireGuard device"),
    "wireguard_mtu": ("--wireguard-mtu", "MTU of the WireGuard device (0: underlay MTU less 80)"),
    "state_dir": ("--state-dir", "where the node's private key is kept (owner-only)"),
}


class _LimitsParam(click.ParamType):
    """The flow API server's limits: name=value,... on the command line and in the environment, a
    mapping in the config file; the limits not named keep their defaults."""

    name = "limits"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_limits(value)
        except (ValueError, TypeError) as err:
            self.fail(str(err), param, ctx)


_CHOICES: dict[str, click.ParamType] = {
    "log_format": click.Choice(LOG_FORMATS),
    "log_level": click.Choice(LOG_LEVELS, case_sensitive=False),
    "flow_ring_size": click.IntRange(min=1),
    "export_max_bytes": click.IntRange(min=1),
    "event_rate_per_endpoint": click.IntRange(min=0),
    "event_burst_per_endpoint": click.IntRange(min=1, max=10_000_000),
    "manifests_poll_seconds": click.FloatRange(min=0, min_open=True),
    "observer_limits": _LimitsParam(),
    "encryption": click.Choice(MODES),
    "wireguard_port": click.IntRange(min=1, max=65535),
    "wireguard_mtu": click.IntRange(min=0, max=65535),
}
_EXTRA_ENV = {"node": ("NODE_NAME",)}  # the downward API's name, after MESHAGENT_NODE
_HINTS = typing.get_type_hints(AgentConfig)
_PATHS = {name for name in SETTINGS if Path in (_HINTS[name], *typing.get_args(_HINTS[name]))}
_PLAIN_TYPES: dict[Any, click.ParamType] = {
    int: click.INT,
    float: click.FLOAT,
    str: click.STRING,
    Path: click.STRING,
}


class _SettingOption(click.Option):
    """An option for a setting: a variable set but empty in the environment switches the setting off, as
    an empty flag value does (click would take an empty variable as not set)."""

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        value = super().resolve_envvar_value(ctx)
        if value is None and any(os.environ.get(name) == "" for name in self._names()):
            return ""
        return value

    def _names(self) -> tuple[str, ...]:
        return (self.envvar,) if isinstance(self.envvar, str) else tuple(self.envvar or ())


def _param_type(setting: str) -> click.ParamType:
    if setting in _CHOICES:
        return _CHOICES[setting]
    kinds = [kind for kind in (_HINTS[setting], *typing.get_args(_HINTS[setting])) if kind in _PLAIN_TYPES]
    return _PLAIN_TYPES[kinds[0]]


def setting_options(command: F) -> F:
    """One option per setting of AgentConfig. An option not given is None, so that the schema's default
    (or the config file's value) applies; an empty value is "" and switches an optional setting off."""
    defaults = {f.name: f.default for f in dataclasses.fields(AgentConfig)}
    for setting in reversed(SETTINGS):
        flag, text = SETTING_FLAGS[setting]
        shown = defaults[setting]
        settings: dict[str, Any] = {
            "envvar": (env_name(setting), *_EXTRA_ENV.get(setting, ())),
            "show_envvar": True,
            "default": None,
            "help": text,
            "cls": _SettingOption,
        }
        if setting == "observer_limits":
            settings["show_default"] = "grpc-go-like, listed in docs/flows.md"
        elif shown is not dataclasses.MISSING and shown is not None:
            settings["show_default"] = str(shown).lower() if isinstance(shown, bool) else str(shown)
        if _HINTS[setting] is bool:
            settings["is_flag"] = True
            if "/" not in flag:
                settings["flag_value"] = True
        else:
            settings["type"] = _param_type(setting)
            if setting in _PATHS:
                settings["metavar"] = "PATH"
        command = click.option(flag, setting, **settings)(command)
    return command


def config_from_context(ctx: click.Context) -> AgentConfig:
    """The configuration `meshagent run` was given. A flag or environment variable wins over the --config
    file, which wins over the schema's default; the file's values are checked by the options' types."""
    values = {name: value for name, value in ctx.params.items() if name in SETTING_FLAGS}
    config_file: Path | None = ctx.params.get("config_file")
    if config_file is not None:
        options = {param.name: param for param in ctx.command.params}
        for name, value in read_config_file(config_file).items():
            if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT:
                continue
            try:
                # YAML null switches a setting off, as an empty value does elsewhere.
                values[name] = "" if value is None else options[name].type_cast_value(ctx, value)
            except click.BadParameter as err:
                raise ConfigError(f"{name} in config file {config_file}: {err.message}") from err
    return build_config(values)


def build_config(values: Mapping[str, Any]) -> AgentConfig:
    """The configuration from the options' values: None is "not given" (the schema's default applies),
    "" is "off"."""
    settings: dict[str, Any] = {"node": ""}
    for name, value in values.items():
        if value is None:
            continue
        if value == "":
            settings[name] = "" if name == "node" else None
        elif name in _PATHS:
            settings[name] = Path(value)
        else:
            settings[name] = value
    return AgentConfig(**settings)


@click.command("run", help="Run the agent on this node.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=env_name("config"),
    show_envvar=True,
    help="YAML file with settings (the environment and flags win)",
)
@setting_options
@click.pass_context
def run_command(ctx: click.Context, **_settings: Any) -> int:
    from meshagent.agent.runtime import Agent

    try:
        config = config_from_context(ctx)
    except ConfigError as err:
        raise click.UsageError(str(err), ctx) from err
    setup_logging(level="debug" if is_verbose(ctx) else config.log_level, fmt=config.log_format)
    agent = Agent(config)
    agent_pid = os.getpid()

    def on_signal(signum: int, _frame: object) -> None:
        if os.getpid() != agent_pid:
            # A helper process forked by a library (pyroute2 enters a netns that way) inherited this
            # handler: it must just end, as it would by default.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        logger.info(
            "signal %d: stopping (the kernel keeps enforcing%s)",
            signum,
            "" if not config.cleanup_on_exit else " until cleanup",
        )
        agent.stop()

    def on_rotate(_signum: int, _frame: object) -> None:
        if os.getpid() == agent_pid and agent.encryption is not None:
            agent.encryption.request_rotation()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_rotate)
    try:
        agent.start()
    except Exception:
        logger.exception("agent failed to start")
        agent.stop()
        return 1
    _tune_interpreter()
    agent.wait()
    return 0


def _tune_interpreter() -> None:
    """Interpreter settings for a long-running agent with a busy event thread.

    The GIL: a thread that returns from a system call (the flow server's socket writes, the reader's
    timer) waits for the running thread to give up the GIL, by default up to 5 ms each time. With the
    event reader busy at high event rates, those waits, several per batch of flows sent, starved the flow
    stream; 0.5 ms keeps them short at little cost (a switch happens only when another thread waits).

    The collector: what was built while starting (compiled programs, the store, caches) lives as long as
    the agent: freeze it out of the cycle collector's scans. And collect young objects less often: the
    flow path makes a few tracked objects per event, and at the default threshold (700) the collector's
    passes over them are a large share of the per-event work at high event rates (bench/flow_pipeline.py)."""
    sys.setswitchinterval(0.0005)
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


@click.command("uninstall", help="Remove the agent's tc filters and pinned maps.")
@click.option("--pin-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--node-netns", default=None, help="network namespace that plays the node")
@click.option(
    "--socket-lb-cgroup",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="the cgroup the socket load-balancer was attached to (default: the pods')",
)
def uninstall_command(pin_dir: Path | None, node_netns: str | None, socket_lb_cgroup: Path | None) -> int:
    from meshagent.agent.config import SOCKET_LB_DIR
    from meshagent.datapath.socklb import default_cgroup
    from meshagent.datapath.uninstall import uninstall
    from meshagent.model.kernel_state import DEFAULT_PIN_DIR

    pin_dir = pin_dir or DEFAULT_PIN_DIR
    lb_dir = pin_dir / SOCKET_LB_DIR
    cgroup = socket_lb_cgroup
    if cgroup is None and (lb_dir.exists() or default_cgroup().exists()):
        cgroup = default_cgroup()
    report = uninstall(pin_dir=pin_dir, netns=node_netns, socket_lb_pin_dir=lb_dir, socket_lb_cgroup=cgroup)
    for line in report.detached:
        click.echo(f"removed our tc filters from {line}")
    for line in report.removed:
        click.echo(f"removed {line}")
    for line in report.already_gone:
        click.echo(f"already gone: {line}")
    for line in report.errors:
        click.echo(f"meshagent uninstall: still there: {line}", err=True)
    if report.found_nothing:
        click.echo(f"nothing of meshagent found (pin directory {pin_dir}, node netns {node_netns or 'own'})")
    return 0 if report.complete else 1
