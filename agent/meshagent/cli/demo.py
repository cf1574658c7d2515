"""`meshagent demo`: the cluster-in-a-box demo (see meshagent.demo.run)."""

from __future__ import annotations

import click


@click.command("demo", help="Run the cluster-in-a-box demo (network namespaces only).")
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=None,
    help="run unattended for this many seconds, then print a summary and exit",
)
@click.option("--keep", is_flag=True, help="keep everything running until Ctrl-C")
@click.option(
    "--nodes",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="spread the pods over this many nodes, one agent each",
)
def demo_command(duration: float | None, keep: bool, nodes: int) -> int:
    from meshagent.demo.run import Demo

    return Demo(duration=duration, keep=keep, nodes=nodes).run()
