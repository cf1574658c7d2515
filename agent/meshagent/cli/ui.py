"""`meshagent ui`: the live service map in the browser (see meshagent.ui)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from meshagent.cli.connection import connection_options
from meshagent.cli.manifests import load_manifests
from meshagent.observer.client import ClientTls
from meshagent.policy.manifests import ManifestSet


@click.command("ui", help="Serve the live service map: who talks to whom, what was dropped, which policy.")
@click.option(
    "--listen",
    default="127.0.0.1:8090",
    show_default=True,
    metavar="HOST:PORT",
    help="where the web page is served (port 0: any free port)",
)
@click.option(
    "--manifests",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="the desired state as a manifest directory: edge panels then show the policy trace, and the"
    " addresses of its Node objects show as those nodes",
)
@connection_options
def ui_command(**params: Any) -> int:
    # Imported here: the web server's packages load only for this command, not for every `meshagent`.
    from meshagent.ui.app import ListenError, serve, split_listen
    from meshagent.ui.nodes import node_addresses
    from meshagent.ui.server import MissingGraphLibrary

    try:
        split_listen(params["listen"])
    except ListenError as err:
        raise click.BadParameter(str(err), param_hint="--listen") from err
    tls = None
    if params["tls_ca"]:
        tls = ClientTls(params["tls_ca"], params["tls_cert"], params["tls_key"], params["tls_server_name"])
    directory: Path | None = params["manifests"]

    def loader() -> ManifestSet:
        assert directory is not None
        return load_manifests(directory)

    def ready(url: str) -> None:
        print(f"service map at {url} (flows from {params['server'] or 'the local agent socket'})", flush=True)

    try:
        asyncio.run(
            serve(
                server=params["server"],
                listen=params["listen"],
                tls=tls,
                manifests=loader if directory is not None else None,
                node_addresses=(lambda: node_addresses(directory)) if directory is not None else None,
                on_ready=ready,
            )
        )
    except MissingGraphLibrary as err:
        print(f"meshagent ui: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"meshagent ui: cannot listen on {params['listen']}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
