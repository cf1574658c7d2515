"""Assembles a BPF program's C source for BCC.

BCC rewrites map method calls (`map.lookup(...)`) only in the main file it compiles, never in headers it
includes. So our local headers (`#include "lib/x.h"`) are inlined into one text here, each marked with a
`#line` directive so that compiler errors still name the right file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parents[3] / "bpf"

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def assemble(entry: Path | str, *, bpf_dir: Path = BPF_DIR) -> str:
    """Returns the source of `entry` (relative to bpf_dir) with every local include inlined once."""
    seen: set[Path] = set()
    return _inline(bpf_dir / entry, seen)


def _inline(path: Path, seen: set[Path]) -> str:
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    out = [f'#line 1 "{path}"']
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _LOCAL_INCLUDE.match(line)
        if match is None:
            out.append(line)
            continue
        out.append(_inline(path.parent / match.group(1), seen))
        out.append(f'#line {number + 1} "{path}"')
    return "\n".join(out) + "\n"
