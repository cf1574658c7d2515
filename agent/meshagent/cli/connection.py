"""The connection flags shared by `meshagent flows` and `meshagent status`: where the observer API is and
how to trust it. Each also reads MESHAGENT_<FLAG> from the environment (as hubble reads HUBBLE_SERVER)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from meshagent.observer.client import ClientTls, ObserverClient

F = TypeVar("F", bound=Callable[..., Any])

_READABLE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "--server",
        {"help": "observer address: socket path, unix:///path or host:port (default: the local socket)"},
    ),
    ("--tls-ca", {"type": _READABLE_FILE, "help": "CA bundle to verify the server (enables TLS)"}),
    ("--tls-cert", {"type": _READABLE_FILE, "help": "client certificate (when the server verifies clients)"}),
    ("--tls-key", {"type": _READABLE_FILE, "help": "client private key"}),
    ("--tls-server-name", {"help": "name to verify in the server certificate"}),
    (
        "--timeout",
        {
            "type": click.FloatRange(min=0, min_open=True),
            "default": 10.0,
            "show_default": True,
            "help": "seconds for requests that do not follow",
        },
    ),
)


def connection_options(command: F) -> F:
    for flag, settings in reversed(_OPTIONS):
        envvar = "MESHAGENT_" + flag.removeprefix("--").replace("-", "_").upper()
        command = click.option(flag, envvar=envvar, show_envvar=True, **settings)(command)
    return command


def client_from_options(params: Mapping[str, Any]) -> ObserverClient:
    tls = None
    if params["tls_ca"]:
        tls = ClientTls(params["tls_ca"], params["tls_cert"], params["tls_key"], params["tls_server_name"])
    return ObserverClient(params["server"], tls=tls, timeout_s=params["timeout"])
