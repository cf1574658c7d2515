"""`meshagent relay`: one Observer API for every node's flows (Hubble-relay compatible), so that
`meshagent flows --server RELAY` (or `hubble observe`) sees the whole cluster."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import click

from meshagent.agent.config import parse_limits
from meshagent.observer.client import ClientTls
from meshagent.observer.listen import ServerConfigError, TlsConfig

logger = logging.getLogger(__name__)

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _peer(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[Any, ...]:
    from meshagent.relay.peers import PeerSpecError, parse_peer

    specs = []
    for value in values:
        for text in value.replace(",", " ").split():  # the environment gives one space/comma list
            try:
                specs.append(parse_peer(text))
            except PeerSpecError as err:
                raise click.BadParameter(str(err), ctx, param) from err
    return tuple(specs)


def _limits(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_limits(value)
    except (ValueError, TypeError) as err:
        raise click.BadParameter(str(err), ctx, param) from err


@click.command("relay", help="Serve every node's flows as one Observer API (like Hubble's relay).")
@click.option(
    "--peer",
    "peers",
    multiple=True,
    callback=_peer,
    envvar="MESHAGENT_RELAY_PEERS",
    show_envvar=True,
    help="an agent's flow API as [NODE=]ADDRESS (socket path, unix:///path or host:port); repeat per node",
)
@click.option(
    "--discover-namespace",
    help="find the agents as the running pods of this namespace (Kubernetes API) instead of --peer",
)
@click.option(
    "--discover-selector",
    default="app.kubernetes.io/name=meshagent,app.kubernetes.io/component=agent",
    show_default=True,
    help="label selector of the agents' pods",
)
@click.option(
    "--peer-port",
    type=click.IntRange(1, 65535),
    default=4244,
    show_default=True,
    help="port of the agents' flow API (--observer-listen) for discovered agents",
)
@click.option(
    "--discover-interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="seconds between two lists of the agents' pods",
)
@click.option(
    "--kubeconfig", help="kubeconfig file (default: in-cluster service account, then ~/.kube/config)"
)
@click.option("--api-server", help="Kubernetes API URL (tests and local emulators)")
@click.option("--listen-socket", type=click.Path(path_type=Path), help="serve on this Unix socket (0600)")
@click.option("--listen", "listen", help="serve on TCP host:port (Hubble's relay uses 4245)")
@click.option("--tls-cert", type=_FILE, help="server certificate for --listen")
@click.option("--tls-key", type=_FILE, help="server private key for --listen")
@click.option("--tls-client-ca", type=_FILE, help="require client certificates signed by this CA")
@click.option("--insecure", is_flag=True, help="allow --listen without TLS")
@click.option("--socket-group", help="group that may read from --listen-socket (0660)")
@click.option("--limits", callback=_limits, help="server limits as name=value,... (as the agent's)")
@click.option("--peer-tls-ca", type=_FILE, help="CA bundle to verify the agents (enables TLS to them)")
@click.option("--peer-tls-cert", type=_FILE, help="client certificate for agents that verify clients")
@click.option("--peer-tls-key", type=_FILE, help="client private key for --peer-tls-cert")
@click.option("--peer-tls-server-name", help="name to verify in the agents' certificates")
@click.option(
    "--peer-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="seconds for a node's answer to a request that does not follow",
)
@click.option(
    "--sort-buffer",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="flows held to put following streams of several nodes in time order",
)
@click.option(
    "--sort-drain",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="seconds a flow waits at most in the sort buffer",
)
def relay_command(**params: Any) -> int:
    from meshagent.relay.peers import ChannelSettings, PeerSpecError
    from meshagent.relay.server import RelayConfig, RelayServer
    from meshagent.relay.service import RelaySettings

    if not params["peers"] and not params["discover_namespace"]:
        raise click.UsageError("give at least one --peer (or MESHAGENT_RELAY_PEERS), or --discover-namespace")
    if params["peers"] and params["discover_namespace"]:
        raise click.UsageError("--peer and --discover-namespace exclude each other")
    if bool(params["tls_cert"]) != bool(params["tls_key"]):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if params["peer_tls_cert"] and not params["peer_tls_ca"]:
        raise click.UsageError("--peer-tls-cert needs --peer-tls-ca")
    tls = (
        TlsConfig(params["tls_cert"], params["tls_key"], params["tls_client_ca"])
        if params["tls_cert"]
        else None
    )
    peer_tls = None
    if params["peer_tls_ca"]:
        peer_tls = ClientTls(
            params["peer_tls_ca"],
            params["peer_tls_cert"],
            params["peer_tls_key"],
            params["peer_tls_server_name"],
        )
    extra = {"limits": params["limits"]} if params["limits"] is not None else {}
    try:
        config = RelayConfig(
            peers=params["peers"],
            unix_socket=params["listen_socket"],
            tcp_address=params["listen"],
            tls=tls,
            allow_insecure_tcp=params["insecure"],
            socket_group=params["socket_group"],
            channel=ChannelSettings(tls=peer_tls, timeout_s=params["peer_timeout"]),
            relay=RelaySettings(sort_capacity=params["sort_buffer"], drain_s=params["sort_drain"]),
            **extra,
        )
        server = RelayServer(config)
    except (ServerConfigError, PeerSpecError) as err:
        raise click.UsageError(str(err)) from err
    discovery = _discovery(server, params) if params["discover_namespace"] else None
    try:
        server.start()
    except ServerConfigError as err:
        raise click.UsageError(str(err)) from err
    if discovery is not None:
        discovery.start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("signal %d: stopping the relay", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        if discovery is not None:
            discovery.stop()
        server.stop()
    return 0


def _discovery(server: Any, params: dict[str, Any]) -> Any:
    """Agents from the Kubernetes API: their running pods, by node."""
    from meshagent.relay.discovery import Discovery
    from meshagent.sources.agent_pods import list_agent_pods
    from meshagent.sources.kube_client import load_api_client

    api = load_api_client(kubeconfig=params["kubeconfig"], host=params["api_server"])
    namespace, selector = params["discover_namespace"], params["discover_selector"]

    def lister() -> list[tuple[str, str]]:
        return [(pod.node, pod.address) for pod in list_agent_pods(api, namespace, selector)]

    return Discovery(server.pool, lister, port=params["peer_port"], interval_s=params["discover_interval"])
