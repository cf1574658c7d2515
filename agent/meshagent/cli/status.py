"""`meshagent status`: flows held, seen, rate and losses, read from the observer API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.request

import grpc

from meshagent.cli.flows import add_connection_flags, client_from_args
from meshagent.observer.status_printer import print_agent_status, print_status

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("status", help="flow observer status: flows held, seen, rate, losses")
    add_connection_flags(p)
    p.add_argument(
        "--health",
        default="127.0.0.1:9879",
        help="the agent's health address, for endpoints and rejections (empty: skip)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        with client_from_args(args) as client:
            status = client.server_status()
            nodes = client.get_nodes()
    except grpc.RpcError as err:
        print(f"meshagent status: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    print_status(sys.stdout, status, nodes)
    if args.health:
        try:
            with urllib.request.urlopen(f"http://{args.health}/status", timeout=3) as answer:
                agent = json.loads(answer.read())
        except (OSError, ValueError) as err:
            print(f"(agent status at {args.health} not available: {err})", file=sys.stderr)
            return 0
        print_agent_status(sys.stdout, agent)
    return 0
