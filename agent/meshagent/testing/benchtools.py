"""Helpers shared by the benchmarks: building the C load tool, medians, and the BENCH line format."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / ".cache"


def build_tcpbench() -> Path:
    """Compiles bench/tools/tcpbench.c into .cache/ when the source is newer than the binary."""
    source = REPO / "bench" / "tools" / "tcpbench.c"
    binary = CACHE / "tcpbench"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        CACHE.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_line(name: str, figures: dict[str, float], ratio: float | None = None) -> str:
    """`BENCH <name> <figure>=<value> ... ratio=<value>`: one line per figure, comparable across runs."""
    parts = [f"{key}={value:.4g}" for key, value in figures.items()]
    if ratio is not None:
        parts.append(f"ratio={ratio:.3f}")
    return f"BENCH {name} " + " ".join(parts)
