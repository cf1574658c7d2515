"""Entry point of the `meshagent` command: the click group that gathers the sub-commands.

Each sub-command lives in its own module under `meshagent.cli`; this module only assembles them, so adding
a command never touches another command's code. Options also come from the environment: a command's own
as MESHAGENT_<OPTION> where the option says so (`meshagent run`'s settings, the connection flags),
otherwise MESHAGENT_<COMMAND>_<OPTION> (for example MESHAGENT_FLOWS_OUTPUT=json). Shell completion comes
from click: `eval "$(_MESHAGENT_COMPLETE=bash_source meshagent)"` (zsh_source, fish_source likewise).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from meshagent import __version__

# pyroute2 forks to enter a network namespace; gRPC's fork handlers would only log about it. Set before
# anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from meshagent.agent.logs import setup_logging
from meshagent.cli.context import VERBOSE
from meshagent.cli.demo import demo_command
from meshagent.cli.encryption import encryption_group
from meshagent.cli.flows import flows_command
from meshagent.cli.policy import policy_group
from meshagent.cli.relay import relay_command
from meshagent.cli.run import run_command, uninstall_command
from meshagent.cli.status import status_command
from meshagent.cli.ui import ui_command

ENV_PREFIX = "MESHAGENT"


@click.group(
    "meshagent",
    help="Sidecarless eBPF L4 networking agent: policy, socket load-balancing, flows.",
    context_settings={"auto_envvar_prefix": ENV_PREFIX, "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="meshagent", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    ctx.meta[VERBOSE] = verbose
    if ctx.invoked_subcommand != run_command.name:  # run sets up logging from its own settings
        setup_logging(level="debug" if verbose else "info", fmt="text")


for _command in (
    run_command,
    uninstall_command,
    demo_command,
    flows_command,
    status_command,
    policy_group,
    ui_command,
    relay_command,
    encryption_group,
):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name="meshagent", standalone_mode=False
        )
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
