"""`meshagent policy list|trace`: what selects each endpoint, and why a connection gets its verdict.

Works from a directory of manifests (`--manifests DIR`) until the agent serves its compiled state.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from meshagent.cli.policy_printer import print_list, print_trace
from meshagent.model.kernel_state import Protocol
from meshagent.policy.inventory import summarize
from meshagent.policy.manifests import compile_manifests, load_manifests
from meshagent.policy.trace import TraceError, resolve_ip, resolve_pod, trace

logger = logging.getLogger(__name__)

_PROTOCOLS = {"tcp": Protocol.TCP, "udp": Protocol.UDP, "sctp": Protocol.SCTP}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("policy", help="policy: list what selects endpoints, trace a verdict")
    sub = parser.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--manifests", type=Path, required=True, help="directory of YAML/JSON manifests")
    common.add_argument("--node", help="only pods on this node are local endpoints (default: every pod)")
    common.add_argument("-o", "--output", choices=("text", "json"), default="text")

    lst = sub.add_parser("list", parents=[common], help="what selects each local endpoint")
    lst.set_defaults(handler=run_list)

    tr = sub.add_parser("trace", parents=[common], help="verdict for one connection, and why")
    src = tr.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="from_pod", metavar="NS/POD")
    src.add_argument("--from-ip", metavar="IP")
    dst = tr.add_mutually_exclusive_group(required=True)
    dst.add_argument("--to", dest="to_pod", metavar="NS/POD")
    dst.add_argument("--to-ip", metavar="IP")
    tr.add_argument("--port", type=int, required=True)
    tr.add_argument("--protocol", choices=sorted(_PROTOCOLS), default="tcp")
    tr.set_defaults(handler=run_trace)


def run_list(args: argparse.Namespace) -> int:
    try:
        manifests = load_manifests(args.manifests)
    except FileNotFoundError as err:
        print(f"meshagent policy list: {err}", file=sys.stderr)
        return 2
    compiler = compile_manifests(manifests, node=args.node)
    print_list(sys.stdout, summarize(compiler), manifests.errors, output=args.output)
    return 0


def run_trace(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        print("meshagent policy trace: --port must be 1-65535", file=sys.stderr)
        return 2
    try:
        manifests = load_manifests(args.manifests)
    except FileNotFoundError as err:
        print(f"meshagent policy trace: {err}", file=sys.stderr)
        return 2
    compiler = compile_manifests(manifests, node=args.node)  # rejected objects are logged by the loader
    try:
        source = resolve_pod(compiler, args.from_pod) if args.from_pod else resolve_ip(compiler, args.from_ip)
        destination = resolve_pod(compiler, args.to_pod) if args.to_pod else resolve_ip(compiler, args.to_ip)
        result = trace(
            compiler,
            source=source,
            destination=destination,
            protocol=_PROTOCOLS[args.protocol],
            port=args.port,
        )
    except TraceError as err:
        print(f"meshagent policy trace: {err}", file=sys.stderr)
        return 2
    print_trace(sys.stdout, result, output=args.output)
    return 0 if result.agrees else 1
