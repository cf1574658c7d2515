"""Compiling and loading the endpoint programs with BCC, with our errors and the compiler/verifier log."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bcc import BPF

from meshagent.datapath.errors import CompileError, DatapathError, LoadError
from meshagent.datapath.source import assemble

logger = logging.getLogger(__name__)

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/meshagent")
ENTRY_SOURCE = "endpoint.c"
PROGRAM_FROM_ENDPOINT = "ma_from_endpoint"
PROGRAM_TO_ENDPOINT = "ma_to_endpoint"


DEFAULT_EVENT_PAGES = 1024  # 4 MiB: about 0.35 s of events at 150k/s, 0.5 s at 100k/s
# Events one endpoint may send a second, and at once (bpf/lib/events.h): above the 100k flows a second one
# pod makes in bench/flow_pipeline.py, and a burst that fills well under half of the default ring buffer.
DEFAULT_EVENT_RATE = 200_000
DEFAULT_EVENT_BURST = 20_000
# How far an RST's sequence number may be from the next one expected and still end the connection.
DEFAULT_RST_WINDOW = 65535


@dataclass(frozen=True)
class Capacities:
    """Map sizes, passed to the compiler as -D defines (bpf/lib/common.h has the defaults)."""

    ipcache: int = 65536
    endpoints: int = 1024
    policy: int = 262144
    conntrack: int = 262144  # ma_ct (LRU): UDP, ICMP, other protocols, TCP first seen mid-stream
    conntrack_tcp: int = 262144  # ma_ct_tcp (never evicts): TCP connections begun by a SYN
    frags: int = 8192
    event_pages: int = DEFAULT_EVENT_PAGES  # ring buffer pages (4 KiB each); a power of two
    event_rate: int = DEFAULT_EVENT_RATE  # events per endpoint per second; 0: no limit
    event_burst: int = DEFAULT_EVENT_BURST
    rst_window: int = DEFAULT_RST_WINDOW

    def cflags(self) -> list[str]:
        return [
            f"-DMA_IPCACHE_MAX={self.ipcache}",
            f"-DMA_ENDPOINTS_MAX={self.endpoints}",
            f"-DMA_POLICY_MAX={self.policy}",
            f"-DMA_CT_MAX={self.conntrack}",
            f"-DMA_CT_TCP_MAX={self.conntrack_tcp}",
            f"-DMA_FRAGS_MAX={self.frags}",
            f"-DMA_EVENTS_PAGES={self.event_pages}",
            f"-DMA_EVENT_RATE={self.event_rate}",
            f"-DMA_EVENT_BURST={self.event_burst}",
            f"-DMA_CT_RST_WINDOW={self.rst_window}",
        ]

    def layout_flags(self) -> list[str]:
        """The flags that shape the pinned maps (datapath/layout.py): all of them but the event ring
        buffer's size, which is not pinned, and the settings that only change what the programs do
        (event budget, RST window), so changing those keeps the maps."""
        return [
            flag
            for flag in replace(self, event_pages=DEFAULT_EVENT_PAGES).cflags()
            if not flag.startswith(("-DMA_EVENT_RATE=", "-DMA_EVENT_BURST=", "-DMA_CT_RST_WINDOW="))
        ]


@dataclass
class LoadedPrograms:
    bpf: Any  # bcc.BPF
    from_endpoint: Any  # bcc function handle (.fd, .name)
    to_endpoint: Any


def ensure_bpffs(pin_dir: Path) -> None:
    """Mounts bpffs at /sys/fs/bpf when it is missing (it is not mounted at boot on our machines)."""
    root = Path("/sys/fs/bpf")
    if pin_dir.is_relative_to(root) and not os.path.ismount(root):
        logger.info("mounting bpffs at %s", root)
        result = subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], capture_output=True, text=True)
        if result.returncode != 0:
            raise DatapathError(f"cannot mount bpffs at {root}: {result.stderr.strip()}")
    pin_dir.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """BCC writes compiler and verifier messages to fd 2; keep them for our exceptions."""
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            out.append(sink.read().decode(errors="replace"))


def load(*, pin_dir: Path, capacities: Capacities, extra_cflags: tuple[str, ...] = ()) -> LoadedPrograms:
    ensure_bpffs(pin_dir)
    cflags = [f'-DMA_PIN_DIR="{pin_dir}"', *capacities.cflags(), *extra_cflags]
    text = assemble(ENTRY_SOURCE)
    log: list[str] = []
    try:
        with captured_stderr() as log:
            bpf = BPF(text=text, cflags=cflags)
    except Exception as err:
        raise CompileError(f"compiling {ENTRY_SOURCE} failed", log="".join(log).strip()) from err
    if log and log[0].strip():
        logger.debug("compiler output: %s", log[0].strip())
    programs = []
    for name in (PROGRAM_FROM_ENDPOINT, PROGRAM_TO_ENDPOINT):
        try:
            with captured_stderr() as log:
                programs.append(bpf.load_func(name, BPF.SCHED_CLS))
        except Exception as err:
            bpf.cleanup()
            raise LoadError(f"the verifier refused {name}", log="".join(log).strip()) from err
    return LoadedPrograms(bpf=bpf, from_endpoint=programs[0], to_endpoint=programs[1])
