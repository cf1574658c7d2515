"""Shell completion, as docs/configuration.md tells a user to set it up: click answers the shell's
completion requests for commands, options and choices."""

from __future__ import annotations

import os
import subprocess
import sys


def complete(*words: str) -> list[str]:
    env = {
        **os.environ,
        "_MESHAGENT_COMPLETE": "bash_complete",
        "COMP_WORDS": " ".join(("meshagent", *words)),
        "COMP_CWORD": str(len(words)),
    }
    done = subprocess.run(
        [sys.executable, "-m", "meshagent.cli.main"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [line.partition(",")[2] for line in done.stdout.splitlines()]


def test_commands_options_and_choices_complete() -> None:
    assert {"flows", "policy", "run", "status"} <= set(complete(""))
    assert complete("flows", "--verd") == ["--verdict"]
    assert set(complete("flows", "-o", "")) == {"compact", "dict", "json", "jsonpb", "table"}
    assert complete("run", "--log-format", "j") == ["json"]
