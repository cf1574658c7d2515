"""`meshagent demo`: the cluster-in-a-box demo (see meshagent.demo.run)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser("demo", help="run the cluster-in-a-box demo (network namespaces only)")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="run unattended for this many seconds, then print a summary and exit",
    )
    demo.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from meshagent.demo.run import Demo

    return Demo(duration=args.duration, keep=args.keep).run()
