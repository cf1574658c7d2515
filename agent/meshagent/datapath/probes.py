"""Kernel capability probes: ask the running kernel what it can do instead of assuming it.

Each probe makes the smallest real object that proves a feature (a map of that type, a trivial program
of that type, a real tc attach in a throwaway network namespace) and releases it at once. A probe never
raises for a missing feature: it returns a `ProbeResult` whose `reason` says why it is unavailable, so
tests can skip with that reason and the agent can degrade (e.g. no ring buffer -> perf buffer).

The probes talk to bpf(2) directly through ctypes rather than through BCC: they must be cheap (no clang
compile) and must tell "this kernel lacks the map type" (EINVAL) from "we lack the privilege" (EPERM).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import errno
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# bpf(2) on x86_64 (arch/x86/entry/syscalls/syscall_64.tbl) and aarch64 (include/uapi/asm-generic/unistd.h).
_SYS_BPF = {"x86_64": 321, "aarch64": 280}

# enum bpf_cmd, bpf_map_type, bpf_prog_type, bpf_attach_type from include/uapi/linux/bpf.h.
_BPF_MAP_CREATE = 0
_BPF_PROG_LOAD = 5

_MAP_ARRAY = 2
_MAP_LPM_TRIE = 11
_MAP_SOCKMAP = 15
_MAP_SOCKHASH = 18
_MAP_RINGBUF = 27
_BPF_F_NO_PREALLOC = 1

_PROG_SCHED_CLS = 3
_PROG_SOCK_OPS = 13
_PROG_SK_MSG = 16
_PROG_CGROUP_SOCK_ADDR = 18
_ATTACH_CGROUP_INET4_CONNECT = 10

_CLONE_NEWNET = 0x40000000

# `r0 = 0; exit`: the smallest program the verifier accepts for every type probed here.
_INSNS_RETURN_0 = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
_LICENSE = b"GPL\0"

# Size of the bpf_attr we pass; the kernel accepts a shorter union as long as what it reads is ours.
_ATTR_SIZE = 128


class Feature(enum.Enum):
    RING_BUFFER = "ring_buffer"
    LPM_TRIE = "lpm_trie"
    SOCKMAP = "sockmap"
    SOCKHASH = "sockhash"
    SCHED_CLS = "sched_cls"
    CLSACT_CLS_BPF = "clsact_cls_bpf"
    CGROUP_SOCK_ADDR = "cgroup_sock_addr"
    SOCK_OPS = "sock_ops"
    SK_MSG = "sk_msg"


@dataclass(frozen=True)
class ProbeResult:
    feature: Feature
    available: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.available


class _BpfSyscallError(OSError):
    """bpf(2) failed; `verifier_log` holds the kernel's words for program loads."""

    def __init__(self, err: int, what: str, verifier_log: str = "") -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.verifier_log = verifier_log


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    machine = os.uname().machine
    if machine not in _SYS_BPF:
        raise _BpfSyscallError(errno.ENOSYS, f"{what}: no bpf(2) number known for {machine}")
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(
        ctypes.c_long(_SYS_BPF[machine]), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(_ATTR_SIZE)
    )
    if ret < 0:
        raise _BpfSyscallError(ctypes.get_errno(), what)
    return int(ret)


def _create_map(map_type: int, *, key_size: int, value_size: int, max_entries: int, flags: int = 0) -> int:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIIII", attr, 0, map_type, key_size, value_size, max_entries, flags)
    return _bpf(_BPF_MAP_CREATE, attr, f"map type {map_type}")


def _load_prog(prog_type: int, *, expected_attach_type: int = 0) -> int:
    insns = ctypes.create_string_buffer(_INSNS_RETURN_0, len(_INSNS_RETURN_0))
    lic = ctypes.create_string_buffer(_LICENSE, len(_LICENSE))
    log = ctypes.create_string_buffer(4096)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # struct { u32 prog_type; u32 insn_cnt; u64 insns; u64 license; u32 log_level; u32 log_size;
    #          u64 log_buf; u32 kern_version; u32 prog_flags; char prog_name[16]; u32 prog_ifindex;
    #          u32 expected_attach_type; ... } (the BPF_PROG_LOAD member of union bpf_attr)
    struct.pack_into(
        "<IIQQIIQII16sII",
        attr,
        0,
        prog_type,
        len(_INSNS_RETURN_0) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(lic),
        1,
        len(log),
        ctypes.addressof(log),
        0,
        0,
        b"meshagent_probe",
        0,
        expected_attach_type,
    )
    what_failed = f"program type {prog_type}"
    try:
        return _bpf(_BPF_PROG_LOAD, attr, what_failed)
    except _BpfSyscallError as err:
        raise _BpfSyscallError(
            err.errno or errno.EINVAL, what_failed, log.value.decode(errors="replace")
        ) from err


def _explain(err: OSError, what: str) -> str:
    code = err.errno or 0
    if code in (errno.EPERM, errno.EACCES):
        return f"{what}: not permitted ({os.strerror(code)}); run as root with CAP_BPF/CAP_SYS_ADMIN"
    if code in (errno.EINVAL, errno.ENOTSUPP if hasattr(errno, "ENOTSUPP") else errno.EOPNOTSUPP):
        return f"{what}: not supported by kernel {os.uname().release} ({os.strerror(code)})"
    if code == errno.ENOSYS:
        return f"{what}: bpf(2) unavailable ({err})"
    log = getattr(err, "verifier_log", "")
    return f"{what}: {err}" + (f"; verifier: {log.strip()[:200]}" if log else "")


def _probe_map(
    feature: Feature, map_type: int, *, key_size: int, value_size: int, max_entries: int, flags: int = 0
) -> ProbeResult:
    try:
        fd = _create_map(
            map_type, key_size=key_size, value_size=value_size, max_entries=max_entries, flags=flags
        )
    except OSError as err:
        return ProbeResult(feature, False, _explain(err, f"cannot create a {feature.value} map"))
    os.close(fd)
    return ProbeResult(feature, True)


def _probe_prog(feature: Feature, prog_type: int, *, expected_attach_type: int = 0) -> ProbeResult:
    try:
        fd = _load_prog(prog_type, expected_attach_type=expected_attach_type)
    except OSError as err:
        return ProbeResult(feature, False, _explain(err, f"cannot load a {feature.value} program"))
    os.close(fd)
    return ProbeResult(feature, True)


def probe_ring_buffer() -> ProbeResult:
    """BPF_MAP_TYPE_RINGBUF (Linux 5.8+); without it the agent falls back to a perf buffer."""
    return _probe_map(Feature.RING_BUFFER, _MAP_RINGBUF, key_size=0, value_size=0, max_entries=4096)


def probe_lpm_trie() -> ProbeResult:
    """BPF_MAP_TYPE_LPM_TRIE keyed by {u32 prefixlen; u32 addr} (IPv4 CIDR lookups)."""
    return _probe_map(
        Feature.LPM_TRIE, _MAP_LPM_TRIE, key_size=8, value_size=4, max_entries=16, flags=_BPF_F_NO_PREALLOC
    )


def probe_sockmap() -> ProbeResult:
    return _probe_map(Feature.SOCKMAP, _MAP_SOCKMAP, key_size=4, value_size=4, max_entries=1)


def probe_sockhash() -> ProbeResult:
    return _probe_map(Feature.SOCKHASH, _MAP_SOCKHASH, key_size=16, value_size=4, max_entries=1)


def probe_sched_cls() -> ProbeResult:
    return _probe_prog(Feature.SCHED_CLS, _PROG_SCHED_CLS)


def probe_cgroup_sock_addr() -> ProbeResult:
    """cgroup/connect4 programs (socket-level load balancing)."""
    return _probe_prog(
        Feature.CGROUP_SOCK_ADDR, _PROG_CGROUP_SOCK_ADDR, expected_attach_type=_ATTACH_CGROUP_INET4_CONNECT
    )


def probe_sock_ops() -> ProbeResult:
    return _probe_prog(Feature.SOCK_OPS, _PROG_SOCK_OPS)


def probe_sk_msg() -> ProbeResult:
    return _probe_prog(Feature.SK_MSG, _PROG_SK_MSG)


def probe_clsact_cls_bpf() -> ProbeResult:
    """A real attach: clsact qdisc + cls_bpf direct-action filter on `lo` of a throwaway netns.

    Loading a SCHED_CLS program proves only the verifier side; the qdisc and classifier may be missing
    modules. The attach runs in a forked child that unshares its network namespace, so nothing is left
    behind on the caller's interfaces: the namespace dies with the child.
    """
    feature = Feature.CLSACT_CLS_BPF
    try:
        prog_fd = _load_prog(_PROG_SCHED_CLS)
    except OSError as err:
        return ProbeResult(feature, False, _explain(err, "cannot load a sched_cls program"))
    try:
        failure = _run_tc_probe(prog_fd)
    finally:
        os.close(prog_fd)
    return ProbeResult(feature, not failure, failure)


def _run_tc_probe(prog_fd: int) -> str:
    """Attach `prog_fd` in a forked child's own netns. Returns "" on success, else the reason."""
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []
    try:
        pid = os.fork()
        if pid == 0:  # child: report through the pipe, never return into the caller's stack
            code = 2
            try:
                os.close(read_end)
                message = _attach_in_new_netns(prog_fd)
                os.write(write_end, message.encode()[:4000])
                code = 0 if not message else 1
            finally:
                os._exit(code)
        os.close(write_end)
        write_end = -1
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    message = b"".join(chunks).decode(errors="replace")
    if os.waitstatus_to_exitcode(status) == 0:
        return ""
    return message or f"tc probe child failed (wait status {status})"


def _attach_in_new_netns(prog_fd: int) -> str:
    """Runs in the forked child. Returns "" on success, else why the attach failed."""
    libc = _libc()
    if libc.unshare(_CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        return f"cannot create a network namespace for the tc probe: {os.strerror(code)}"
    try:
        # Imported here: only the child needs netlink, and pyroute2 is heavy to import.
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            try:
                ipr.tc("add", "clsact", lo)
            except NetlinkError as err:
                return f"clsact qdisc unavailable: {err}"
            try:
                ipr.tc(
                    "add-filter",
                    "bpf",
                    lo,
                    ":1",
                    fd=prog_fd,
                    name="meshagent_probe",
                    parent="ffff:fff2",
                    classid=1,
                    direct_action=True,
                )
            except NetlinkError as err:
                return f"cls_bpf direct-action filter unavailable: {err}"
    except Exception as err:  # the child must report, whatever went wrong
        return f"tc probe failed: {type(err).__name__}: {err}"
    return ""


PROBES: dict[Feature, Callable[[], ProbeResult]] = {
    Feature.RING_BUFFER: probe_ring_buffer,
    Feature.LPM_TRIE: probe_lpm_trie,
    Feature.SOCKMAP: probe_sockmap,
    Feature.SOCKHASH: probe_sockhash,
    Feature.SCHED_CLS: probe_sched_cls,
    Feature.CLSACT_CLS_BPF: probe_clsact_cls_bpf,
    Feature.CGROUP_SOCK_ADDR: probe_cgroup_sock_addr,
    Feature.SOCK_OPS: probe_sock_ops,
    Feature.SK_MSG: probe_sk_msg,
}


def probe(feature: Feature) -> ProbeResult:
    result = PROBES[feature]()
    if not result.available:
        logger.info("kernel feature %s unavailable: %s", feature.value, result.reason)
    return result


def missing(*features: Feature) -> str:
    """Why any of `features` is unavailable ("; "-joined), or "" when all are there.

    For tests: `if why := probes.missing(Feature.SK_MSG): pytest.skip(why)`.
    """
    return "; ".join(result.reason for result in map(probe, features) if not result.available)


def probe_all() -> dict[Feature, ProbeResult]:
    """Every probe, in declaration order. Cheap (no compiler): a few ms plus one fork for tc."""
    return {feature: probe(feature) for feature in PROBES}
