"""`meshagent policy list|trace`: what selects each endpoint, and why a connection gets its verdict.

Works from a directory of manifests (`--manifests DIR`) until the agent serves its compiled state.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from meshagent.cli.manifests import load_manifests
from meshagent.cli.policy_printer import print_list, print_trace
from meshagent.model.kernel_state import Protocol
from meshagent.policy.inventory import summarize
from meshagent.policy.manifests import compile_manifests
from meshagent.policy.trace import TraceError, resolve_ip, resolve_pod, trace

_PROTOCOLS = {"tcp": Protocol.TCP, "udp": Protocol.UDP, "sctp": Protocol.SCTP}
F = TypeVar("F", bound=Callable[..., Any])


@click.group("policy", help="Policy: list what selects endpoints, trace a verdict.")
def policy_group() -> None:
    pass


def _common(command: F) -> F:
    """The options every policy command takes: where the manifests are and whose endpoints to show."""
    command = click.option("-o", "--output", type=click.Choice(("text", "json")), default="text")(command)
    command = click.option("--node", help="only pods on this node are local endpoints (default: every pod)")(
        command
    )
    return click.option(
        "--manifests", type=click.Path(path_type=Path), required=True, help="directory of YAML/JSON manifests"
    )(command)


@policy_group.command("list", help="What selects each local endpoint.")
@_common
def list_command(manifests: Path, node: str | None, output: str) -> int:
    return run_list(manifests, node=node, output=output)


@policy_group.command("trace", help="Verdict for one connection, and why.")
@_common
@click.option("--from", "from_pod", metavar="NS/POD", help="the source pod")
@click.option("--from-ip", metavar="IP", help="the source address")
@click.option("--to", "to_pod", metavar="NS/POD", help="the destination pod")
@click.option("--to-ip", metavar="IP", help="the destination address")
@click.option("--port", type=click.IntRange(1, 65535), required=True)
@click.option("--protocol", type=click.Choice(sorted(_PROTOCOLS)), default="tcp", show_default=True)
@click.pass_context
def trace_command(ctx: click.Context, **params: Any) -> int:
    for pod_param, ip_param, pod_flag in (("from_pod", "from_ip", "from"), ("to_pod", "to_ip", "to")):
        if (params[pod_param] is None) == (params[ip_param] is None):
            ip_flag = ip_param.replace("_", "-")
            raise click.UsageError(f"give exactly one of --{pod_flag} and --{ip_flag}", ctx)
    return run_trace(**params)


def run_list(directory: Path, *, node: str | None, output: str) -> int:
    try:
        manifests = load_manifests(directory)
    except FileNotFoundError as err:
        print(f"meshagent policy list: {err}", file=sys.stderr)
        return 2
    compiler = compile_manifests(manifests, node=node)
    print_list(sys.stdout, summarize(compiler), manifests.errors, output=output)
    return 0


def run_trace(
    *,
    manifests: Path,
    node: str | None,
    output: str,
    from_pod: str | None,
    from_ip: str | None,
    to_pod: str | None,
    to_ip: str | None,
    port: int,
    protocol: str,
) -> int:
    try:
        loaded = load_manifests(manifests)
    except FileNotFoundError as err:
        print(f"meshagent policy trace: {err}", file=sys.stderr)
        return 2
    compiler = compile_manifests(loaded, node=node)
    try:
        source = resolve_pod(compiler, from_pod) if from_pod else resolve_ip(compiler, str(from_ip))
        destination = resolve_pod(compiler, to_pod) if to_pod else resolve_ip(compiler, str(to_ip))
        result = trace(
            compiler, source=source, destination=destination, protocol=_PROTOCOLS[protocol], port=port
        )
    except TraceError as err:
        print(f"meshagent policy trace: {err}", file=sys.stderr)
        return 2
    print_trace(sys.stdout, result, output=output)
    return 0 if result.agrees else 1
