"""The socket load-balancer: compiles bpf/sock_lb.c with BCC, attaches its four cgroup v2 socket hooks to
one cgroup, and writes Service frontends to its maps as a diff.

Programs are attached with BPF_F_ALLOW_MULTI, so programs others attached to the same cgroup keep
running, and detached by our own program descriptors, so exactly what we added is removed. Maps are
pinned under the pin directory (`ma_lb_*`), like the policy datapath's.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcc import BPF, BPFAttachType

from meshagent.datapath.errors import AttachError, CompileError, LoadError, MapError
from meshagent.datapath.loader import DEFAULT_PIN_DIR, _captured_stderr, ensure_bpffs
from meshagent.datapath.maps import lb_affinity, lb_revnat, lb_services
from meshagent.datapath.maps.base import TypedMap
from meshagent.datapath.source import assemble
from meshagent.model.services import Frontend, LBEntry
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
)
MAP_NAMES = (lb_services.MAP_NAME, lb_revnat.MAP_NAME, lb_affinity.MAP_NAME)


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
    """Map sizes, passed as -D defines (bpf/lib/lb_maps.h has the defaults)."""

    services: int = 16384
    revnat: int = 262144
    affinity: int = 65536

    def cflags(self) -> list[str]:
        return [
            f"-DMA_LB_SERVICES_MAX={self.services}",
            f"-DMA_LB_REVNAT_MAX={self.revnat}",
            f"-DMA_LB_AFFINITY_MAX={self.affinity}",
        ]


@dataclass
class ApplyResult:
    diff: LBDiff
    errors: list[str] = field(default_factory=list)


class SocketLB:
    """Load, attach to `cgroup`, apply frontends; detach() removes exactly our attachments."""

    def __init__(
        self,
        *,
        pin_dir: Path = DEFAULT_PIN_DIR,
        cgroup: Path | None = None,
        capacities: LBCapacities = LBCapacities(),
    ) -> None:
        self.pin_dir = pin_dir
        self.cgroup = cgroup if cgroup is not None else default_cgroup()
        self.capacities = capacities
        self.bpf: Any = None  # bcc.BPF once loaded
        self._programs: dict[str, Any] = {}
        self._attached: list[tuple[Any, int]] = []
        self._cgroup_fd: int | None = None
        self.services: TypedMap[lb_services.ServiceKey, lb_services.ServiceValue] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def load(self) -> None:
        ensure_bpffs(self.pin_dir)
        cflags = [f'-DMA_PIN_DIR="{self.pin_dir}"', *self.capacities.cflags()]
        log: list[str] = []
        try:
            with _captured_stderr() as log:
                self.bpf = BPF(text=assemble(ENTRY_SOURCE).encode(), cflags=cflags)
        except Exception as err:
            raise CompileError(f"compiling {ENTRY_SOURCE} failed", log="".join(log).strip()) from err
        for name, attach_type in PROGRAMS:
            try:
                with _captured_stderr() as log:
                    # sock_addr programs must name their hook at load time (expected_attach_type).
                    self._programs[name] = self.bpf.load_func(
                        name.encode(), BPF.CGROUP_SOCK_ADDR, attach_type=attach_type
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

    def attach(self) -> None:
        if self.bpf is None:
            raise AttachError("load() first")
        if self._attached:
            return
        try:
            self._cgroup_fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise AttachError(f"cannot open cgroup {self.cgroup}: {err.strerror}") from err
        for name, attach_type in PROGRAMS:
            program = self._programs[name]
            try:
                BPF.attach_func(program, self._cgroup_fd, attach_type, BPF_F_ALLOW_MULTI)
            except Exception as err:
                self.detach()
                raise AttachError(f"attaching {name} to {self.cgroup} failed: {err}") from err
            self._attached.append((program, attach_type))
        logger.info("socket load-balancer attached to %s", self.cgroup)

    def detach(self) -> None:
        """Detaches the programs this object attached, and only those."""
        problems = []
        while self._attached:
            program, attach_type = self._attached.pop()
            try:
                if self._cgroup_fd is not None:
                    BPF.detach_func(program, self._cgroup_fd, attach_type)
            except Exception as err:  # keep detaching the others
                problems.append(f"{program.name.decode()}: {err}")
        if self._cgroup_fd is not None:
            os.close(self._cgroup_fd)
            self._cgroup_fd = None
        if problems:
            raise AttachError(f"detaching from {self.cgroup}: {'; '.join(problems)}")

    def close(self) -> None:
        """Detaches and unloads; the pinned maps stay (a restarted agent adopts them)."""
        try:
            self.detach()
        finally:
            if self.bpf is not None:
                self.bpf.cleanup()
                self.bpf = None
                self._programs.clear()
                self.services = None

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

    def _services(self) -> TypedMap[lb_services.ServiceKey, lb_services.ServiceValue]:
        if self.services is None:
            raise MapError("the socket load-balancer is not loaded", errno=0)
        return self.services

    def entries(self) -> dict[Frontend, LBEntry]:
        """What the kernel holds now, decoded."""
        decoded = (lb_services.decode(k, v) for k, v in self._services().items())
        return {entry.frontend: entry for entry in decoded}

    def apply(self, desired: Mapping[Frontend, LBEntry]) -> ApplyResult:
        """Writes the difference: changed or new frontends (one atomic update each), then removals."""
        services = self._services()
        result = ApplyResult(diff=diff(self.entries(), desired))
        for entry in result.diff.upserts:
            try:
                services.update(*lb_services.encode(entry))
            except MapError as err:
                result.errors.append(f"{entry.frontend}: {err}")
        for frontend in result.diff.removals:
            try:
                services.delete(lb_services.encode_key(frontend))
            except MapError as err:
                result.errors.append(f"removing {frontend}: {err}")
        for error in result.errors:
            logger.error("socket load-balancer: %s", error)
        return result


def remove_pin_dir_if_empty(pin_dir: Path) -> None:
    """Tests pin under a per-run directory; remove it when nothing else is left in it."""
    if pin_dir.exists() and not any(pin_dir.iterdir()):
        shutil.rmtree(pin_dir, ignore_errors=True)
