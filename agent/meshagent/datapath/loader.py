"""Compiling and loading the endpoint programs with BCC, with our errors and the compiler/verifier log.

BCC is imported only where it compiles: loading its library maps LLVM into the process, and the agent
compiles in a short-lived process of its own (compile_child.py) so that this module's settings can be
imported without it."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from meshagent.datapath.errors import CompileError, DatapathError, LoadError
from meshagent.datapath.program_text import assemble
from meshagent.model.kernel_state import DEFAULT_PIN_DIR as DEFAULT_PIN_DIR  # the datapath's default too

logger = logging.getLogger(__name__)

ENTRY_SOURCE = "endpoint.c"
PROGRAM_FROM_ENDPOINT = "ma_from_endpoint"
PROGRAM_TO_ENDPOINT = "ma_to_endpoint"
# The IPv6 programs, entered by tail call through this program array, at index MA_DIR_* (bpf/lib/maps6.h).
IPV6_PROGRAMS = ("ma_to_endpoint6", "ma_from_endpoint6")  # ingress (0), egress (1)
IPV6_PROGRAM_ARRAY = "ma_ipv6_progs"


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


@dataclass(frozen=True)
class HeaderSet:
    """A kernel header tree to compile against: `source` is what BCC_KERNEL_SOURCE is set to, or None for
    BCC's own lookup of the running kernel's /lib/modules/<release>/{build,source}."""

    origin: str  # "bundled" (the image's) or "host"
    path: Path
    source: str | None

    def __str__(self) -> str:
        return f"{self.origin} headers {self.path}"

    def present(self) -> bool:
        """BCC's own test for a usable tree (failing it, BCC looks for the kernel's kheaders module). Its
        lookup under /lib/modules uses `source` beside `build` when there is one (Debian's split sets)."""
        trees = [self.path]
        if self.source is None:
            trees.insert(0, self.path.parent / "source")
        return any((tree / "include" / "linux" / "kconfig.h").is_file() for tree in trees)


# The images set this to the header tree they carry (deploy/kernel-headers.sh): nodes then need none.
BUNDLED_HEADERS_ENV = "MESHAGENT_KERNEL_HEADERS"
BCC_SOURCE_ENV = "BCC_KERNEL_SOURCE"
# An operator's own BCC_KERNEL_SOURCE, as the process started (the variable is rewritten below).
_HOST_SOURCE = os.environ.get(BCC_SOURCE_ENV) or None


def header_sets(environ: Mapping[str, str] | None = None, release: str | None = None) -> list[HeaderSet]:
    """The header sets to try, in order: the bundled set when there is one, then the host's (the
    operator's BCC_KERNEL_SOURCE, or /lib/modules/<release>/build, present when the host's headers are
    mounted into the container or installed on the machine)."""
    environ = os.environ if environ is None else environ
    found = []
    bundled = environ.get(BUNDLED_HEADERS_ENV)
    if bundled:
        found.append(HeaderSet("bundled", Path(bundled), bundled))
    if _HOST_SOURCE:
        found.append(HeaderSet("host", Path(_HOST_SOURCE), _HOST_SOURCE))
    else:
        kernel = release or os.uname().release
        found.append(HeaderSet("host", Path("/lib/modules") / kernel / "build", None))
    return found


def compile_bpf(text: str, cflags: list[str], *, entry: str) -> Any:
    """Compiles `text` with the first header set that works. The set that worked stays in
    BCC_KERNEL_SOURCE, so the process's later compiles (socket load balancing) use the same headers."""
    from bcc import BPF

    tried: list[str] = []
    logs: list[str] = []
    last_error: Exception | None = None
    for headers in header_sets():
        if not headers.present():
            tried.append(f"{headers}: not found")
            continue
        if headers.source is None:
            os.environ.pop(BCC_SOURCE_ENV, None)
        else:
            os.environ[BCC_SOURCE_ENV] = headers.source
        log: list[str] = []
        try:
            with captured_stderr() as log:
                bpf = BPF(text=text.encode(), cflags=cflags)  # bytes: BCC warns about str with the text
        except Exception as err:
            last_error = err
            output = "".join(log).strip()
            first = next((line for line in output.splitlines() if "error" in line), str(err))
            tried.append(f"{headers}: {first.strip()}")
            logs.append(f"--- {headers}\n{output}")
            continue
        logger.info("compiled %s against %s", entry, headers)
        if log and log[0].strip():
            logger.debug("compiler output: %s", log[0].strip())
        return bpf
    # Not always the headers' fault (a pinned map that cannot be opened fails the same way): the message
    # names each set with its first error and leaves the judgement to the reader.
    raise CompileError(
        f"compiling {entry} failed; kernel header sets tried: {'; '.join(tried)}", log="\n".join(logs)
    ) from last_error


def load(*, pin_dir: Path, capacities: Capacities, extra_cflags: tuple[str, ...] = ()) -> LoadedPrograms:
    from bcc import BPF

    ensure_bpffs(pin_dir)
    cflags = [f'-DMA_PIN_DIR="{pin_dir}"', *capacities.cflags(), *extra_cflags]
    bpf = compile_bpf(assemble(ENTRY_SOURCE), cflags, entry=ENTRY_SOURCE)
    log: list[str] = []
    programs = []
    for name in (PROGRAM_FROM_ENDPOINT, PROGRAM_TO_ENDPOINT, *IPV6_PROGRAMS):
        try:
            with captured_stderr() as log:
                programs.append(bpf.load_func(name.encode(), BPF.SCHED_CLS))
        except Exception as err:
            bpf.cleanup()
            raise LoadError(f"the verifier refused {name}", log="".join(log).strip()) from err
    # Before anything is attached: without its entries the endpoint programs drop all IPv6.
    ipv6_programs = bpf.get_table(IPV6_PROGRAM_ARRAY.encode())
    for index, program in enumerate(programs[2:]):
        ipv6_programs[ctypes.c_int(index)] = ctypes.c_int(program.fd)
    return LoadedPrograms(bpf=bpf, from_endpoint=programs[0], to_endpoint=programs[1])
