"""`meshagent status`: flows held, seen, rate and losses, read from the observer API."""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import Any

import click
import grpc

from meshagent.cli.connection import client_from_options, connection_options
from meshagent.cli.status_printer import print_agent_status, print_status


@click.command("status", help="Flow observer status: flows held, seen, rate, losses.")
@connection_options
@click.option(
    "--health",
    default="127.0.0.1:9879",
    show_default=True,
    help="the agent's health address, for endpoints and rejections (empty: skip)",
)
def status_command(**params: Any) -> int:
    try:
        with client_from_options(params) as client:
            status = client.server_status()
            nodes = client.get_nodes()
    except grpc.RpcError as err:
        print(f"meshagent status: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    print_status(sys.stdout, status, nodes)
    health = params["health"]
    if health:
        try:
            with urllib.request.urlopen(f"http://{health}/status", timeout=3) as answer:
                agent = json.loads(answer.read())
        except (OSError, ValueError) as err:
            print(f"(agent status at {health} not available: {err})", file=sys.stderr)
            return 0
        print_agent_status(sys.stdout, agent)
    return 0
