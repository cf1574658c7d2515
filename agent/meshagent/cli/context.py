"""What the `meshagent` group passes down to its commands through click's context."""

from __future__ import annotations

import click

VERBOSE = "meshagent.verbose"


def is_verbose(ctx: click.Context) -> bool:
    return bool(ctx.meta.get(VERBOSE, False))
