"""Reading the docs for the tests: markdown tables, fenced command lines, relative links."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The body rows of the first table whose header line starts with `header_start`, cells stripped."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([cell.strip() for cell in row.strip().strip("|").split(" | ")])
            return rows
    raise AssertionError(f"no table starting with {header_start!r}")


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def command_lines(text: str, program: str = "meshagent") -> list[list[str]]:
    """Every command in fenced code blocks that starts with `program`, split as a shell would (comments and
    anything after a pipe dropped)."""
    out: list[list[str]] = []
    in_block = in_shell_block = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            # Diagrams are fenced as ```text; commands as plain ``` (or a shell language).
            in_block = not in_block
            in_shell_block = in_block and line.strip()[3:] in ("", "sh", "bash", "console", "shell")
            continue
        in_block_for_commands = in_shell_block
        stripped = line.strip().removeprefix("$ ")
        if in_block_for_commands and stripped.startswith(program + " "):
            words = shlex.split(stripped.split(" | ")[0], comments=True)
            out.append(words)
    return out


def relative_links(text: str) -> list[str]:
    return [
        target.split("#")[0]
        for target in _LINK.findall(text)
        if "://" not in target and not target.startswith("#") and not target.startswith("mailto:")
    ]


def resolve(doc: Path, target: str) -> Path:
    return (doc.parent / target).resolve()
