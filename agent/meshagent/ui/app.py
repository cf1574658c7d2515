"""Runs the service map: the flow feed, the graph and the web server, until stopped."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping

from aiohttp import web

from meshagent.observer.client import ClientTls
from meshagent.ui.feed import FlowFeed
from meshagent.ui.server import MapServer, MapState
from meshagent.ui.why import ManifestLoader, Tracer


class ListenError(ValueError):
    pass


def split_listen(address: str) -> tuple[str, int]:
    """'HOST:PORT' (port 0: any free port) into its parts; a clear error otherwise."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ListenError(f"--listen {address!r}: expected HOST:PORT, e.g. 127.0.0.1:8090")
    return host.strip("[]"), int(port_text)


async def serve(
    *,
    server: str | None,
    listen: str,
    tls: ClientTls | None = None,
    manifests: ManifestLoader | None = None,
    node_addresses: Callable[[], Mapping[str, str]] | None = None,
    on_ready: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Serves until `stop` is set (or, with handle_signals, SIGINT/SIGTERM: only a main thread's loop
    can take signals); `on_ready` gets the page's URL once it listens. `node_addresses` names the
    cluster's nodes by address (another node's address is the world to an agent; the map names it)."""
    host, port = split_listen(listen)
    state = MapState()
    map_server = MapServer(
        state, tracer=Tracer(manifests) if manifests else None, node_addresses=node_addresses
    )
    runner = web.AppRunner(map_server.app, access_log=None)
    await runner.setup()
    feed = FlowFeed(server, state.add_flow, state.set_status, tls=tls)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        await map_server.read_node_addresses()  # before the first flows, so no node is taken for the world
        feed.start()
        shown_host = f"[{host}]" if ":" in host else host
        on_ready(f"http://{shown_host}:{bound}/")
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        await loop.run_in_executor(None, feed.stop)
