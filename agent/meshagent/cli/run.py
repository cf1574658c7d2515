"""`meshagent run` (the agent) and `meshagent uninstall` (remove what the agent put in the kernel)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Flag -> (setting, help). Every setting can also come from --config FILE or MESHAGENT_<SETTING>.
_VALUE_FLAGS = {
    "--manifests": ("manifests", "standalone: a directory of Kubernetes YAML to read and watch"),
    "--kubeconfig": (
        "kubeconfig",
        "kubeconfig file (default: in-cluster service account, then ~/.kube/config)",
    ),
    "--api-server": ("api_server", "Kubernetes API URL (tests and local emulators)"),
    "--node": ("node", "this node's name (default: $NODE_NAME)"),
    "--node-netns": ("node_netns", "network namespace that plays the node (default: the agent's own)"),
    "--pin-dir": ("pin_dir", "where maps are pinned (default /sys/fs/bpf/meshagent)"),
    "--observer-socket": (
        "observer_socket",
        "Unix socket of the flow API (default /var/run/meshagent/observer.sock)",
    ),
    "--observer-socket-group": (
        "observer_socket_group",
        "group that may read flows from the Unix socket (0660); default: owner only (0600)",
    ),
    "--observer-listen": ("observer_listen", "also serve the flow API on TCP, e.g. 0.0.0.0:4245"),
    "--observer-limits": (
        "observer_limits",
        "flow API server limits as name=value,... (e.g. max_connections=256,idle_timeout_seconds=60)",
    ),
    "--observer-tls-cert": ("observer_tls_cert", "TLS certificate for --observer-listen"),
    "--observer-tls-key": ("observer_tls_key", "TLS key for --observer-listen"),
    "--observer-tls-client-ca": ("observer_tls_client_ca", "require client certificates signed by this CA"),
    "--metrics-listen": ("metrics_listen", "Prometheus metrics address (default 127.0.0.1:9965)"),
    "--health-listen": ("health_listen", "/healthz and /readyz address (default 127.0.0.1:9879)"),
    "--flow-ring-size": ("flow_ring_size", "flows held in memory (default 65536)"),
    "--event-buffer-mib": (
        "event_buffer_mib",
        "the kernel's event ring buffer in MiB, a power of two (default 4)",
    ),
    "--socket-lb-cgroup": ("socket_lb_cgroup", "cgroup v2 path whose processes get Service translation"),
    "--export-file": ("export_file", "also write flows as JSON lines to this file (rotated by size)"),
    "--export-file-group": ("export_file_group", "group that may read the export files (0640)"),
    "--log-format": ("log_format", "auto (JSON when not a terminal), json or text"),
    "--log-level": ("log_level", "debug, info, warning or error"),
}
_SWITCHES = {
    "--observer-insecure": ("observer_insecure", "allow --observer-listen without TLS"),
    "--no-observer-front-process": (
        "observer_front_process",
        "serve the flow API from the agent's own process (default: a front process on another core)",
    ),
    "--cleanup": (
        "cleanup_on_exit",
        "on exit remove our tc filters and pinned maps (default: leave enforcing)",
    ),
    "--no-policy": ("enable_policy", "do not enforce policy (flows only)"),
    "--no-flows": ("enable_flows", "do not serve flows or metrics"),
    "--socket-lb": ("enable_socket_lb", "translate Service addresses at the socket (cgroup hooks)"),
    "--sockmap": ("enable_sockmap", "splice established local TCP connections socket to socket"),
}


def register(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="run the agent on this node")
    run.add_argument("--config", type=Path, help="YAML file with settings (flags and environment win)")
    for flag, (dest, text) in _VALUE_FLAGS.items():
        run.add_argument(flag, dest=dest, help=text)
    for flag, (dest, text) in _SWITCHES.items():
        run.add_argument(flag, dest=dest, action="store_const", const=not flag.startswith("--no-"), help=text)
    run.set_defaults(handler=_run)

    uninstall = subparsers.add_parser("uninstall", help="remove the agent's tc filters and pinned maps")
    uninstall.add_argument("--pin-dir", type=Path, default=None)
    uninstall.add_argument("--node-netns", default=None)
    uninstall.add_argument(
        "--socket-lb-cgroup",
        type=Path,
        default=None,
        help="the cgroup the socket load-balancer was attached to (default: the pods')",
    )
    uninstall.set_defaults(handler=_uninstall)


def _run(args: argparse.Namespace) -> int:
    from meshagent.agent.config import ConfigError, load_config
    from meshagent.agent.logs import setup_logging
    from meshagent.agent.runtime import Agent

    flags = {dest: getattr(args, dest) for dest, _ in [*_VALUE_FLAGS.values(), *_SWITCHES.values()]}
    try:
        config = load_config(flags=flags, config_file=args.config)
    except ConfigError as err:
        print(f"meshagent run: {err}", file=sys.stderr)
        return 2
    setup_logging(level="debug" if args.verbose else config.log_level, fmt=config.log_format)
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

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
    passes over them cost about a fifth of the per-event work at high event rates."""
    sys.setswitchinterval(0.0005)
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def _uninstall(args: argparse.Namespace) -> int:
    from meshagent.agent.config import SOCKET_LB_DIR
    from meshagent.datapath.datapath import Datapath
    from meshagent.datapath.loader import DEFAULT_PIN_DIR
    from meshagent.datapath.socklb import default_cgroup, uninstall_from

    pin_dir = args.pin_dir or DEFAULT_PIN_DIR
    lb_dir = pin_dir / SOCKET_LB_DIR
    if lb_dir.exists():
        cgroup = args.socket_lb_cgroup or default_cgroup()
        detached = uninstall_from(cgroup, pin_dir=lb_dir)
        print(f"removed the socket load-balancer from {cgroup} ({detached} hooks)")
    datapath = Datapath(pin_dir=pin_dir, netns=args.node_netns)
    datapath.load()  # adopts the pinned maps, which list every endpoint we attached to
    endpoints = len(datapath.state()[0])
    datapath.uninstall()
    print(f"removed meshagent from {endpoints} interfaces and {datapath.pin_dir}")
    return 0
