"""Entry point of the `meshagent` command.

Each sub-command lives in its own module under `meshagent.cli` and exposes
`register(subparsers)`; this module only assembles them, so adding a command
never touches another command's code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from meshagent import __version__

# pyroute2 forks to enter a network namespace; gRPC's fork handlers would only log about it. Set before
# anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# Modules under meshagent.cli that contribute sub-commands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "meshagent.cli.run",
    "meshagent.cli.demo",
    "meshagent.cli.flows",
    "meshagent.cli.status",
    "meshagent.cli.policy",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshagent",
        description="Sidecarless eBPF L4 networking agent: policy, socket load-balancing, flows.",
    )
    parser.add_argument("--version", action="version", version=f"meshagent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
