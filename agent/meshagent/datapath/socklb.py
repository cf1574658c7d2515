"""The socket load-balancer: compiles bpf/sock_lb.c with BCC, attaches its cgroup v2 socket hooks (four
for IPv4 sockets, four for IPv6 ones) to one cgroup, and writes Service frontends to its maps as a diff:
IPv4 frontends to ma_lb_services, IPv6 ones to ma_lb6_services.

Programs are attached with BPF_F_ALLOW_MULTI, so programs others attached to the same cgroup keep
running, and detached by our own program descriptors, so exactly what we added is removed. Maps are
pinned under the pin directory (`ma_lb_*`), like the policy datapath's.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcc import BPF, BPFAttachType, libbcc

from meshagent.datapath.errors import AttachError, CompileError, DatapathError, LoadError, MapError
from meshagent.datapath.loader import DEFAULT_PIN_DIR, captured_stderr, ensure_bpffs
from meshagent.datapath.maps import (
    lb6_affinity,
    lb6_events,
    lb6_revnat,
    lb6_services,
    lb_affinity,
    lb_events,
    lb_revnat,
    lb_services,
    lb_sockhash,
)
from meshagent.datapath.maps.base import PerCpuArray, TypedMap
from meshagent.datapath.pinned import open_pinned
from meshagent.datapath.program_text import assemble
from meshagent.model.services import Frontend, LBEntry, ServiceTranslation
from meshagent.services.diff import LBDiff, diff

logger = logging.getLogger(__name__)

ENTRY_SOURCE = "sock_lb.c"
BPF_F_ALLOW_MULTI = 2
# The pods' parent cgroup under the cgroup v2 mount (kubelet with the systemd cgroup driver).
DEFAULT_CGROUP_NAME = "kubepods.slice"

# Program name -> the hook it attaches to.
PROGRAMS: tuple[tuple[str, int], ...] = (
    ("ma_sock_connect4", BPFAttachType.CGROUP_INET4_CONNECT),
    ("ma_sock_sendmsg4", BPFAttachType.CGROUP_UDP4_SENDMSG),
    ("ma_sock_recvmsg4", BPFAttachType.CGROUP_UDP4_RECVMSG),
    ("ma_sock_getpeername4", BPFAttachType.CGROUP_INET4_GETPEERNAME),
    ("ma_sock_connect6", BPFAttachType.CGROUP_INET6_CONNECT),
    ("ma_sock_sendmsg6", BPFAttachType.CGROUP_UDP6_SENDMSG),
    ("ma_sock_recvmsg6", BPFAttachType.CGROUP_UDP6_RECVMSG),
    ("ma_sock_getpeername6", BPFAttachType.CGROUP_INET6_GETPEERNAME),
)
MAP_NAMES = (
    lb_services.MAP_NAME,
    lb_revnat.MAP_NAME,
    lb_affinity.MAP_NAME,
    lb6_services.MAP_NAME,
    lb6_revnat.MAP_NAME,
    lb6_affinity.MAP_NAME,
)
Services4 = TypedMap[lb_services.ServiceKey, lb_services.ServiceValue]
Services6 = TypedMap[lb6_services.ServiceKey6, lb6_services.ServiceValue6]
SOCKOPS_PROGRAM = "ma_sock_ops"
SK_MSG_PROGRAM = "ma_sock_msg"


def cgroup2_mount() -> Path:
    """Where cgroup v2 is mounted: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return Path(fields[1])
    raise AttachError("cgroup v2 is not mounted")


def default_cgroup() -> Path:
    return cgroup2_mount() / DEFAULT_CGROUP_NAME


@dataclass(frozen=True)
class LBCapacities:
    """Map sizes, passed as -D defines (bpf/lib/lb_maps.h and lb6_maps.h have the defaults)."""

    services: int = 16384
    revnat: int = 262144
    affinity: int = 65536
    services6: int = 16384
    revnat6: int = 262144
    affinity6: int = 65536

    def cflags(self) -> list[str]:
        return [
            f"-DMA_LB_SERVICES_MAX={self.services}",
            f"-DMA_LB_REVNAT_MAX={self.revnat}",
            f"-DMA_LB_AFFINITY_MAX={self.affinity}",
            f"-DMA_LB6_SERVICES_MAX={self.services6}",
            f"-DMA_LB6_REVNAT_MAX={self.revnat6}",
            f"-DMA_LB6_AFFINITY_MAX={self.affinity6}",
        ]


@dataclass
class ApplyResult:
    diff: LBDiff
    errors: list[str] = field(default_factory=list)


class SocketLB:
    """Load, attach to `cgroup`, apply frontends; detach() removes exactly our attachments.

    accelerate=True also builds and attaches the sockmap splice (sockops on the cgroup, sk_msg on
    ma_lb_sockhash): off by default, because it makes small writes slower (bench/socklb.py).
    """

    def __init__(
        self,
        *,
        pin_dir: Path = DEFAULT_PIN_DIR,
        cgroup: Path | None = None,
        capacities: LBCapacities = LBCapacities(),
        accelerate: bool = False,
    ) -> None:
        self.pin_dir = pin_dir
        self.cgroup = cgroup if cgroup is not None else default_cgroup()
        self.capacities = capacities
        self.accelerate = accelerate
        self.bpf: Any = None  # bcc.BPF once loaded
        self._programs: dict[str, Any] = {}
        # (program, attach type, target fd): the cgroup's fd, or the sockhash's for sk_msg.
        self._attached: list[tuple[Any, int, int]] = []
        self._cgroup_fd: int | None = None
        self._sockhash_fd: int | None = None
        self._sockhash6_fd: int | None = None
        self.services: Services4 | None = None
        self.services6: Services6 | None = None
        self._events_thread: threading.Thread | None = None
        self._events_stop = threading.Event()
        self._on_event: Callable[[ServiceTranslation], None] | None = None
        self._ring_open = False

    # -- lifecycle ------------------------------------------------------------------------------------

    def load(self) -> None:
        ensure_bpffs(self.pin_dir)
        cflags = [f'-DMA_PIN_DIR="{self.pin_dir}"', *self.capacities.cflags()]
        if self.accelerate:
            cflags.append("-DMA_LB_SOCKMAP=1")
        log: list[str] = []
        try:
            with captured_stderr() as log:
                self.bpf = BPF(text=assemble(ENTRY_SOURCE).encode(), cflags=cflags)
        except Exception as err:
            raise CompileError(f"compiling {ENTRY_SOURCE} failed", log="".join(log).strip()) from err
        loads: list[tuple[str, int, int]] = [(n, BPF.CGROUP_SOCK_ADDR, t) for n, t in PROGRAMS]
        if self.accelerate:
            loads += [(SOCKOPS_PROGRAM, BPF.SOCK_OPS, -1), (SK_MSG_PROGRAM, BPF.SK_MSG, -1)]
        for name, prog_type, attach_type in loads:
            try:
                with captured_stderr() as log:
                    # sock_addr programs must name their hook at load time (expected_attach_type).
                    self._programs[name] = self.bpf.load_func(
                        name.encode(), prog_type, attach_type=attach_type
                    )
            except Exception as err:
                self.close()
                raise LoadError(f"the verifier refused {name}", log="".join(log).strip()) from err
        table = self.bpf[lb_services.MAP_NAME.encode()]
        self.services = TypedMap(
            name=lb_services.MAP_NAME,
            fd=table.get_fd(),
            key_type=lb_services.ServiceKey,
            value_type=lb_services.ServiceValue,
            capacity=self.capacities.services,
        )
        self.services6 = TypedMap(
            name=lb6_services.MAP_NAME,
            fd=self.bpf[lb6_services.MAP_NAME.encode()].get_fd(),
            key_type=lb6_services.ServiceKey6,
            value_type=lb6_services.ServiceValue6,
            capacity=self.capacities.services6,
        )
        if self.accelerate:
            # BCC 0.26 cannot wrap a sockhash in a table object ("Unknown table type 18"): take its fd.
            self._sockhash_fd = int(libbcc.lib.bpf_table_fd(self.bpf.module, lb_sockhash.MAP_NAME.encode()))
            self._sockhash6_fd = int(libbcc.lib.bpf_table_fd(self.bpf.module, lb_sockhash.MAP6_NAME.encode()))

    def attach(self, *, replace_stale: bool = True) -> None:
        """Attaches our programs to the cgroup. With replace_stale, programs of ours that an earlier agent
        left on the same hooks are detached after ours are in place: never a moment without translation,
        never two sets."""
        if self.bpf is None:
            raise AttachError("load() first")
        if self._attached:
            return
        try:
            self._cgroup_fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise AttachError(f"cannot open cgroup {self.cgroup}: {err.strerror}") from err
        hooks: list[tuple[str, int, int, int]] = [
            (name, attach_type, self._cgroup_fd, BPF_F_ALLOW_MULTI) for name, attach_type in PROGRAMS
        ]
        if self.accelerate:
            assert self._sockhash_fd is not None and self._sockhash6_fd is not None
            # The message verdict first (on both sockhashes), so that no socket is in a map without it.
            hooks[:0] = [
                (SK_MSG_PROGRAM, BPFAttachType.SK_MSG_VERDICT, self._sockhash_fd, 0),
                (SK_MSG_PROGRAM, BPFAttachType.SK_MSG_VERDICT, self._sockhash6_fd, 0),
            ]
            hooks.append((SOCKOPS_PROGRAM, BPFAttachType.CGROUP_SOCK_OPS, self._cgroup_fd, BPF_F_ALLOW_MULTI))
        for name, attach_type, target, flags in hooks:
            program = self._programs[name]
            try:
                BPF.attach_func(program, target, attach_type, flags)
            except Exception as err:
                self.detach()
                raise AttachError(f"attaching {name} to {self.cgroup} failed: {err}") from err
            self._attached.append((program, attach_type, target))
        if replace_stale:
            self._retire_stale()
        logger.info("socket load-balancer attached to %s (acceleration %s)", self.cgroup, self.accelerate)

    def _retire_stale(self) -> None:
        assert self._cgroup_fd is not None
        ours = {_program_info(program.fd).id for program, _, _ in self._attached}
        _detach_ours(self._cgroup_fd, keep=ours)

    def detach(self) -> None:
        """Detaches the programs this object attached, and only those (already gone is fine)."""
        problems = []
        while self._attached:
            program, attach_type, target = self._attached.pop()
            if _libbpf.bpf_prog_detach2(program.fd, target, attach_type) < 0:
                err = ctypes.get_errno()
                if err != errno.ENOENT:  # ENOENT: another agent already retired it
                    problems.append(f"{program.name.decode()}: {os.strerror(err)}")
        if self._cgroup_fd is not None:
            os.close(self._cgroup_fd)
            self._cgroup_fd = None
        if problems:
            raise AttachError(f"detaching from {self.cgroup}: {'; '.join(problems)}")

    # -- translation events ---------------------------------------------------------------------------

    def start_events(self, on_event: Callable[[ServiceTranslation], None], *, thread: bool = True) -> None:
        """Delivers every translation decision to on_event: from a thread draining the ring buffer every
        10 ms, or (thread=False) on each poll_events() call."""
        if self.bpf is None:
            raise DatapathError("load() first")
        self._on_event = on_event
        if not self._ring_open:
            # Opened once per loaded object; the callback it calls can change. One consume drains both.
            self.bpf[lb_events.MAP_NAME.encode()].open_ring_buffer(self._deliver)
            self.bpf[lb6_events.MAP_NAME.encode()].open_ring_buffer(self._deliver6)
            self._ring_open = True
        if thread:
            self._events_stop.clear()
            self._events_thread = threading.Thread(target=self._drain, name="socklb-events", daemon=True)
            self._events_thread.start()

    def _deliver(self, _ctx: Any, data: Any, size: int) -> int:
        return self._hand_over(lb_events.decode, data, size)

    def _deliver6(self, _ctx: Any, data: Any, size: int) -> int:
        return self._hand_over(lb6_events.decode, data, size)

    def _hand_over(self, decode: Callable[[bytes], ServiceTranslation], data: Any, size: int) -> int:
        on_event = self._on_event
        if on_event is not None:
            try:
                on_event(decode(ctypes.string_at(data, size)))
            except Exception:  # a bad consumer must not stop the reader
                logger.exception("translation event consumer failed")
        return 0  # BCC wants an int: None costs an exception per event

    def _drain(self) -> None:
        while not self._events_stop.wait(0.01):
            self.poll_events()
        self.poll_events()

    def poll_events(self) -> None:
        if self.bpf is not None:
            self.bpf.ring_buffer_consume()

    def stop_events(self) -> None:
        if self._events_thread is not None:
            self._events_stop.set()
            self._events_thread.join()
            self._events_thread = None
        self._on_event = None

    def lost_events(self) -> int:
        if self.bpf is None:
            return 0
        table = self.bpf[lb_events.LOST_MAP_NAME.encode()]
        lost = PerCpuArray(
            name=lb_events.LOST_MAP_NAME, fd=table.get_fd(), value_type=lb_sockhash.Counter, capacity=1
        )
        return sum(c.value for c in lost.read(0))

    # -- acceleration state ---------------------------------------------------------------------------

    def accelerated_sockets(self) -> list[lb_sockhash.SockKey]:
        """The sockets now in ma_lb_sockhash (each by its own view of its connection)."""
        if self._sockhash_fd is None:
            return []
        table: TypedMap[lb_sockhash.SockKey, lb_sockhash.Cookie] = TypedMap(
            name=lb_sockhash.MAP_NAME,
            fd=self._sockhash_fd,
            key_type=lb_sockhash.SockKey,
            value_type=lb_sockhash.Cookie,
            capacity=0,
        )
        return table.keys()

    def accelerated_sockets6(self) -> list[lb_sockhash.SockKey6]:
        """The IPv6 sockets now in ma_lb6_sockhash (v4-mapped ones are in ma_lb_sockhash)."""
        if self._sockhash6_fd is None:
            return []
        table: TypedMap[lb_sockhash.SockKey6, lb_sockhash.Cookie] = TypedMap(
            name=lb_sockhash.MAP6_NAME,
            fd=self._sockhash6_fd,
            key_type=lb_sockhash.SockKey6,
            value_type=lb_sockhash.Cookie,
            capacity=0,
        )
        return table.keys()

    def accel_counters(self) -> dict[str, int]:
        """Messages redirected to a local peer, and passed to the stack, summed over CPUs."""
        if not self.accelerate or self.bpf is None:
            return {"redirected": 0, "passed": 0}
        table = self.bpf[lb_sockhash.STATS_MAP_NAME.encode()]
        counters = PerCpuArray(
            name=lb_sockhash.STATS_MAP_NAME, fd=table.get_fd(), value_type=lb_sockhash.Counter, capacity=2
        )
        return {
            "redirected": sum(c.value for c in counters.read(lb_sockhash.ACCEL_REDIRECTED)),
            "passed": sum(c.value for c in counters.read(lb_sockhash.ACCEL_PASSED)),
        }

    def release(self) -> None:
        """Stops reading events and drops our handles, leaving the hooks attached and the maps pinned: the
        kernel keeps translating while no agent runs, and the next agent replaces the hooks in place."""
        self.stop_events()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    def close(self) -> None:
        """Detaches and unloads; the pinned maps stay (a restarted agent adopts them)."""
        self.stop_events()
        try:
            self.detach()
        finally:
            if self.bpf is not None:
                self.bpf.cleanup()
                self.bpf = None
                self._ring_open = False
                self._programs.clear()
                self.services = None
                self.services6 = None

    def uninstall(self) -> None:
        """close() and remove our pinned maps."""
        self.close()
        for name in MAP_NAMES:
            path = self.pin_dir / name
            if path.exists():
                path.unlink()

    def __enter__(self) -> SocketLB:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- state ----------------------------------------------------------------------------------------

    def _tables(self) -> tuple[Services4, Services6]:
        if self.services is None or self.services6 is None:
            raise MapError("the socket load-balancer is not loaded", errno=0)
        return self.services, self.services6

    def entries(self) -> dict[Frontend, LBEntry]:
        """What the kernel holds now (both families), decoded."""
        return _decoded(*self._tables())

    def apply(self, desired: Mapping[Frontend, LBEntry]) -> ApplyResult:
        """Writes the difference: changed or new frontends (one atomic update each), then removals. Each
        family to its own map; a failed write (a full map) is reported in the result, never skipped."""
        services, services6 = self._tables()
        result = ApplyResult(diff=diff(self.entries(), desired))
        for entry in result.diff.upserts:
            try:
                if entry.frontend.address.version == 6:
                    services6.update(*lb6_services.encode(entry))
                else:
                    services.update(*lb_services.encode(entry))
            except MapError as err:
                result.errors.append(f"{entry.frontend}: {err}")
        for frontend in result.diff.removals:
            try:
                if frontend.address.version == 6:
                    services6.delete(lb6_services.encode_key(frontend))
                else:
                    services.delete(lb_services.encode_key(frontend))
            except MapError as err:
                result.errors.append(f"removing {frontend}: {err}")
        for error in result.errors:
            logger.error("socket load-balancer: %s", error)
        return result


def _decoded(services: Services4, services6: Services6 | None) -> dict[Frontend, LBEntry]:
    decoded = [lb_services.decode(k, v) for k, v in services.items()]
    if services6 is not None:
        decoded += [lb6_services.decode(k, v) for k, v in services6.items()]
    return {entry.frontend: entry for entry in decoded}


# -- programs attached to a cgroup hook (libbpf), to retire what an earlier agent left -----------------

_libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libbpf.bpf_prog_query.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_uint32,
    ctypes.POINTER(ctypes.c_uint32),
    ctypes.POINTER(ctypes.c_uint32),
    ctypes.POINTER(ctypes.c_uint32),
]
_libbpf.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
_libbpf.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
_libbpf.bpf_prog_detach2.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]

# struct bpf_prog_info (uapi/linux/bpf.h): id at offset 4, name[BPF_OBJ_NAME_LEN] at offset 64.
_PROG_NAME_LEN = 16
_INFO_SIZE = 80
_MAX_PROGS = 64


@dataclass(frozen=True)
class AttachedProgram:
    id: int
    name: str


def _program_info(fd: int) -> AttachedProgram:
    buffer = (ctypes.c_char * _INFO_SIZE)()
    length = ctypes.c_uint32(_INFO_SIZE)
    if _libbpf.bpf_obj_get_info_by_fd(fd, buffer, ctypes.byref(length)) < 0:
        raise AttachError(f"cannot read program info: {os.strerror(ctypes.get_errno())}")
    raw = bytes(buffer)
    name = raw[64 : 64 + _PROG_NAME_LEN].split(b"\0", 1)[0].decode(errors="replace")
    return AttachedProgram(int.from_bytes(raw[4:8], "little"), name)


def _attached_programs(cgroup_fd: int, attach_type: int) -> list[AttachedProgram]:
    ids = (ctypes.c_uint32 * _MAX_PROGS)()
    count = ctypes.c_uint32(_MAX_PROGS)
    flags = ctypes.c_uint32(0)
    if _libbpf.bpf_prog_query(cgroup_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(count)) < 0:
        raise AttachError(f"cannot list the cgroup's programs: {os.strerror(ctypes.get_errno())}")
    out = []
    for prog_id in ids[: count.value]:
        fd = _libbpf.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            continue  # detached meanwhile
        try:
            out.append(_program_info(fd))
        finally:
            os.close(fd)
    return out


def _detach_ours(cgroup_fd: int, *, keep: set[int]) -> int:
    """Detaches every program with one of our names from our hooks of the cgroup, except `keep`."""
    detached = 0
    for name, attach_type in (*PROGRAMS, (SOCKOPS_PROGRAM, BPFAttachType.CGROUP_SOCK_OPS)):
        kernel_name = name[: _PROG_NAME_LEN - 1]  # the kernel keeps 15 characters of a name
        for found in _attached_programs(cgroup_fd, attach_type):
            if found.name == kernel_name and found.id not in keep:
                logger.info("detaching %s (id %d)", name, found.id)
                _detach_by_id(cgroup_fd, attach_type, found.id)
                detached += 1
    return detached


def pinned_entries(pin_dir: Path = DEFAULT_PIN_DIR) -> dict[Frontend, LBEntry]:
    """What the pinned service maps hold, read without loading any program (status, inspection). The IPv6
    map may be missing when an agent from before IPv6 support pinned the IPv4 one."""
    fd = open_pinned(pin_dir / lb_services.MAP_NAME)
    fd6 = open_pinned(pin_dir / lb6_services.MAP_NAME) if (pin_dir / lb6_services.MAP_NAME).exists() else None
    try:
        table: Services4 = TypedMap(
            name=lb_services.MAP_NAME,
            fd=fd,
            key_type=lb_services.ServiceKey,
            value_type=lb_services.ServiceValue,
            capacity=0,
        )
        table6: Services6 | None = None
        if fd6 is not None:
            table6 = TypedMap(
                name=lb6_services.MAP_NAME,
                fd=fd6,
                key_type=lb6_services.ServiceKey6,
                value_type=lb6_services.ServiceValue6,
                capacity=0,
            )
        return _decoded(table, table6)
    finally:
        os.close(fd)
        if fd6 is not None:
            os.close(fd6)


def uninstall_from(cgroup: Path, *, pin_dir: Path = DEFAULT_PIN_DIR) -> int:
    """For `meshagent uninstall` from a process that loaded nothing: detaches every program of ours from
    the cgroup and removes our pinned maps. Returns how many attachments were removed."""
    try:
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise AttachError(f"cannot open cgroup {cgroup}: {err.strerror}") from err
    try:
        detached = _detach_ours(fd, keep=set())
    finally:
        os.close(fd)
    for name in MAP_NAMES:
        (pin_dir / name).unlink(missing_ok=True)
    return detached


def _detach_by_id(cgroup_fd: int, attach_type: int, prog_id: int) -> None:
    fd = _libbpf.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return  # gone already
    try:
        if _libbpf.bpf_prog_detach2(fd, cgroup_fd, attach_type) < 0 and ctypes.get_errno() != errno.ENOENT:
            raise AttachError(f"cannot detach program {prog_id}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
