"""The real `meshagent` command line, parsed without running a command: for tests that check that shown
or shipped command lines are valid (docs, the DaemonSet) and what they configure."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from unittest import mock

import click
from meshagent.agent.config import AgentConfig
from meshagent.cli.main import cli
from meshagent.cli.run import config_from_context


def parse(argv: Sequence[str]) -> click.Context:
    """The context of the command that `argv` (without the program name) names, its options parsed and
    checked by click (click.UsageError or click.BadParameter when they are not valid)."""
    words = list(argv)
    command: click.Command = cli
    name = "meshagent"
    ctx: click.Context | None = None
    while isinstance(command, click.Group):
        split = next((i for i, word in enumerate(words) if not word.startswith("-")), None)
        if split is None:
            raise click.UsageError(f"{name}: no command in {argv!r}")
        ctx = command.make_context(name, words[: split + 1], parent=ctx)
        name, words = words[split], words[split + 1 :]
        found = command.get_command(ctx, name)
        if found is None:
            raise click.UsageError(f"no such command {name!r}", ctx)
        command = found
    return command.make_context(name, words, parent=ctx)


def run_config(argv: Sequence[str], environ: Mapping[str, str]) -> AgentConfig:
    """The configuration `meshagent run` builds from `argv` in exactly the environment `environ`."""
    with mock.patch.dict(os.environ, environ, clear=True):
        return config_from_context(parse(argv))
