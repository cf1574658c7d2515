"""Least privilege for the observer front process: once its sockets are bound it needs no capability.

The agent runs as root with the capabilities the datapath needs (BPF, network administration); the front
process inherits them, yet all it does after binding is read and write sockets it already holds. So it
drops everything it can: the capability bounding set, supplementary groups, its user and group (to
`nobody` by default), every remaining capability, and it sets no_new_privs so nothing it runs can
gain any back. `drop()` checks the result from /proc and raises if a capability is left.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(RuntimeError):
    """A privilege could not be dropped; the front process must not serve with it."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"{what}: {os.strerror(err)}")


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """The capability sets of a process (CapInh, CapPrm, CapEff, CapBnd, CapAmb) from /proc."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            out[key] = int(value.strip(), 16)
    return out


CAP_SETGID, CAP_SETUID, CAP_SETPCAP = 6, 7, 8


def drop(user: int | None, group: int | None) -> str:
    """Drops every capability, and the user and group to `user`/`group` where it may (root with
    CAP_SETUID/CAP_SETGID). Returns who it now runs as; raises PrivilegeError if a capability is left.

    Without CAP_SETPCAP the bounding set stays as it is, and without CAP_SETUID the user does: harmless
    once the process holds no capability and no_new_privs keeps execve from granting any."""
    libc = _libc()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    effective = capabilities().get("CapEff", 0)
    if effective & (1 << CAP_SETPCAP):
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last + 1):
            _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap} (bounding set)")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    if group is not None and effective & (1 << CAP_SETGID):
        os.setgroups([])
        os.setresgid(group, group, group)
    if user is not None and effective & (1 << CAP_SETUID):
        os.setresuid(user, user, user)  # leaving uid 0 clears the permitted and effective sets
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # all zero: no capability in any set
    _check(libc.capset(ctypes.byref(header), data), "capset")
    left = {k: v for k, v in capabilities().items() if k != "CapBnd" and v}
    if left:
        raise PrivilegeError(f"capabilities left after dropping them: {left}")
    return f"uid {os.getuid()} gid {os.getgid()}, no capabilities"
