"""Reading the pinned maps without loading any program: for checks, tests and inspection while an agent
runs (or after it died). Opens each map by its path under the pin directory, read-only use."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from meshagent.datapath.errors import MapError
from meshagent.datapath.maps import endpoints, ipcache, policy
from meshagent.datapath.maps.base import FamilyMaps, TypedMap
from meshagent.model.kernel_state import EndpointEntry, IPCacheEntry

_libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libbpf.bpf_obj_get.argtypes = [ctypes.c_char_p]
_libbpf.bpf_obj_get.restype = ctypes.c_int

_libbpf.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
_libbpf.bpf_obj_get_info_by_fd.restype = ctypes.c_int

PolicyTrie = dict[policy.TrieKey, policy.TrieValue]


class _MapInfo(ctypes.Structure):
    """The leading fields of struct bpf_map_info (uapi/linux/bpf.h); the kernel fills what fits."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


def _map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    length = ctypes.c_uint32(ctypes.sizeof(info))
    if _libbpf.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(length)) != 0:
        err = ctypes.get_errno()
        raise MapError(f"cannot read map info: {os.strerror(err)}", errno=err)
    return info


def map_sizes(fd: int) -> tuple[int, int]:
    """(key size, value size) of the map behind `fd`."""
    info = _map_info(fd)
    return info.key_size, info.value_size


def map_capacity(fd: int) -> int:
    """max_entries of the map behind `fd` (for a ring buffer: its data size in bytes)."""
    return int(_map_info(fd).max_entries)


def open_pinned(path: Path) -> int:
    """A file descriptor for the map pinned at `path` (the caller closes it)."""
    fd = _libbpf.bpf_obj_get(str(path).encode())
    if fd < 0:
        err = ctypes.get_errno() or -fd
        raise MapError(f"cannot open pinned map {path}: {os.strerror(err)}", errno=err)
    return int(fd)


def read_state(
    endpoints_map: endpoints.EndpointMaps,
    ipcache_map: FamilyMaps[ipcache.IPCacheValue],
    policy_map: TypedMap[policy.PolicyKey, policy.PolicyValue],
) -> tuple[dict[int, EndpointEntry], set[IPCacheEntry], PolicyTrie]:
    """What the maps hold, decoded: endpoints by ifindex, ipcache entries, policy trie entries."""
    found_endpoints = {k.ifindex: endpoints.decode(k, v) for k, v in endpoints_map.items()}
    found_ipcache = {ipcache.decode(k, v) for k, v in ipcache_map.items()}
    found_policy = dict(policy.decode(k, v) for k, v in policy_map.items())
    return found_endpoints, found_ipcache, found_policy


class PinnedMaps:
    """The policy state maps of a pin directory, opened by path."""

    def __init__(self, pin_dir: Path) -> None:
        self._fds: list[int] = []
        self.endpoints = endpoints.EndpointMaps(
            self._open(pin_dir, endpoints.MAP_NAME, endpoints.EndpointKey, endpoints.EndpointValue),
            self._open(pin_dir, endpoints.MAP_NAME6, endpoints.EndpointKey, endpoints.Endpoint6Value),
        )
        self.ipcache = FamilyMaps(
            self._open(pin_dir, ipcache.MAP_NAME, ipcache.IPCacheKey, ipcache.IPCacheValue),
            self._open(pin_dir, ipcache.MAP_NAME6, ipcache.IPCache6Key, ipcache.IPCacheValue),
        )
        self.policy = self._open(pin_dir, policy.MAP_NAME, policy.PolicyKey, policy.PolicyValue)

    def _open(self, pin_dir: Path, name: str, key: type[Any], value: type[Any]) -> TypedMap[Any, Any]:
        fd = open_pinned(pin_dir / name)
        self._fds.append(fd)
        return TypedMap(name=name, fd=fd, key_type=key, value_type=value, capacity=0)

    def state(self) -> tuple[dict[int, EndpointEntry], set[IPCacheEntry], PolicyTrie]:
        return read_state(self.endpoints, self.ipcache, self.policy)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> PinnedMaps:
        return self

    def __exit__(self, *_exc: tuple[type[BaseException], BaseException, TracebackType] | None) -> None:
        self.close()
