"""Helpers shared by the benchmarks: building the C load tools, medians, and the BENCH line format."""

from __future__ import annotations

import os
import statistics
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / ".cache"


def build_tool(name: str, *flags: str) -> Path:
    """Compiles bench/tools/<name>.c into .cache/<name> when the source is newer than the binary. The
    binary is written under a temporary name and renamed, so benchmarks running at once never see half
    of one."""
    source = REPO / "bench" / "tools" / f"{name}.c"
    binary = CACHE / name
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        CACHE.mkdir(exist_ok=True)
        partial = CACHE / f".{name}.{os.getpid()}"
        try:
            subprocess.run(["gcc", "-O2", *flags, "-o", str(partial), str(source)], check=True)
            partial.replace(binary)
        finally:
            partial.unlink(missing_ok=True)
    return binary


def build_tcpbench() -> Path:
    """bench/tools/tcpbench.c, compiled (see build_tool)."""
    return build_tool("tcpbench", "-pthread")


def build_udpspray() -> Path:
    """bench/tools/udpspray.c, compiled (see build_tool)."""
    return build_tool("udpspray")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_line(name: str, figures: dict[str, float], ratio: float | None = None) -> str:
    """`BENCH <name> <figure>=<value> ... ratio=<value>`: one line per figure, comparable across runs."""
    parts = [f"{key}={value:.4g}" for key, value in figures.items()]
    if ratio is not None:
        parts.append(f"ratio={ratio:.3f}")
    return f"BENCH {name} " + " ".join(parts)


class ProgramStats:
    """Kernel-measured run time of BPF programs (kernel.bpf_stats_enabled): nanoseconds per run, which a
    noisy machine disturbs far less than throughput figures. Enabled for the life of the object."""

    def __init__(self) -> None:
        self._previous = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")

    @staticmethod
    def program_id(fd: int) -> int:
        import ctypes

        libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
        info = (ctypes.c_uint32 * 64)()  # struct bpf_prog_info starts with type, id
        length = ctypes.c_uint32(ctypes.sizeof(info))
        if libbpf.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(length)) != 0:
            raise OSError(ctypes.get_errno(), "bpf_obj_get_info_by_fd")
        return int(info[1])

    @staticmethod
    def sample(prog_id: int) -> tuple[int, int]:
        """(total run time in ns, runs) so far."""
        import json

        out = subprocess.run(
            ["bpftool", "prog", "show", "id", str(prog_id), "-j"], capture_output=True, text=True, check=True
        ).stdout
        data = json.loads(out)
        return int(data.get("run_time_ns", 0)), int(data.get("run_cnt", 0))

    def close(self) -> None:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text(self._previous)


def spread(values: list[float]) -> tuple[float, float]:
    """(lowest, highest): what a median hides."""
    return (min(values), max(values)) if values else (float("nan"), float("nan"))


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (the agent and its front process, say)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(process_tree(int(child)))
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its descendants so far (gone ones no longer count)."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident size of one process (not its descendants), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
