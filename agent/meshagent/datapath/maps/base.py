"""Typed access to a BPF map through its file descriptor, with our own ctypes mirrors.

BCC's table objects generate their own key/value classes; we use ours (checked against BCC's by a
privileged test) so that the rest of the agent never depends on BCC's generated types, and so that an
error number reaches us (BCC turns failures into a bare Exception with text). The calls go through
libbpf, not BCC's library, which would bring LLVM into the agent.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from meshagent.datapath.errors import MapError, MapFullError
from meshagent.datapath.libbpf import address, lib, possible_cpus

K = TypeVar("K", bound=ctypes.Structure)
V = TypeVar("V", bound=ctypes.Structure)

# Errors the kernel returns when a map has no room: E2BIG for hash maps, ENOSPC for LPM tries.
_FULL_ERRNOS = (errno_codes.E2BIG, errno_codes.ENOSPC)


class TypedMap(Generic[K, V]):
    """A map of fixed-size key and value structs."""

    def __init__(self, *, name: str, fd: int, key_type: type[K], value_type: type[V], capacity: int) -> None:
        self.name = name
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.capacity = capacity

    def lookup(self, key: K) -> V | None:
        value = self.value_type()
        if lib.bpf_map_lookup_elem(self.fd, address(key), address(value)) < 0:
            return None
        return value

    def update(self, key: K, value: V) -> None:
        if lib.bpf_map_update_elem(self.fd, address(key), address(value), 0) < 0:
            err = ctypes.get_errno()
            if err in _FULL_ERRNOS:
                raise MapFullError(f"map {self.name} is full ({self.capacity} entries)", errno=err)
            raise MapError(f"update of map {self.name} failed: {os.strerror(err)}", errno=err)

    def delete(self, key: K) -> bool:
        """Deletes key; False if it was not there."""
        if lib.bpf_map_delete_elem(self.fd, address(key)) < 0:
            err = ctypes.get_errno()
            if err == errno_codes.ENOENT:
                return False
            raise MapError(f"delete from map {self.name} failed: {os.strerror(err)}", errno=err)
        return True

    def keys(self) -> list[K]:
        """A snapshot of the keys (entries may come and go while the datapath runs)."""
        out: list[K] = []
        current = self.key_type()
        following = self.key_type()
        if lib.bpf_map_get_next_key(self.fd, None, address(following)) < 0:
            return out
        while True:
            out.append(_copy(following))
            ctypes.memmove(ctypes.byref(current), ctypes.byref(following), ctypes.sizeof(self.key_type))
            if lib.bpf_map_get_next_key(self.fd, address(current), address(following)) < 0:
                return out

    def items(self) -> Iterator[tuple[K, V]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def clear(self) -> None:
        for key in self.keys():
            self.delete(key)

    def __len__(self) -> int:
        return len(self.keys())


class PerCpuArray(Generic[V]):
    """A per-CPU array: each index holds one value per possible CPU; reads return them all."""

    def __init__(self, *, name: str, fd: int, value_type: type[V], capacity: int) -> None:
        self.name = name
        self.fd = fd
        self.value_type = value_type
        self.capacity = capacity
        self.ncpus = possible_cpus()
        # The kernel copies each CPU's value into an 8-byte aligned slot.
        self._slot = (ctypes.sizeof(value_type) + 7) & ~7

    def read(self, index: int) -> list[V]:
        buffer = (ctypes.c_char * (self._slot * self.ncpus))()
        key = ctypes.c_uint32(index)
        if lib.bpf_map_lookup_elem(self.fd, address(key), address(buffer)) < 0:
            err = ctypes.get_errno()
            raise MapError(f"read of map {self.name}[{index}] failed: {os.strerror(err)}", errno=err)
        return [self.value_type.from_buffer_copy(buffer, cpu * self._slot) for cpu in range(self.ncpus)]

    def reset(self, index: int) -> None:
        buffer = (ctypes.c_char * (self._slot * self.ncpus))()
        key = ctypes.c_uint32(index)
        if lib.bpf_map_update_elem(self.fd, address(key), address(buffer), 0) < 0:
            err = ctypes.get_errno()
            raise MapError(f"reset of map {self.name}[{index}] failed: {os.strerror(err)}", errno=err)


def _copy(struct: K) -> K:
    return type(struct).from_buffer_copy(struct)


class FamilyMaps(Generic[V]):
    """An IPv4 map and its IPv6 counterpart seen as one: a key of the IPv6 map's key type goes to the
    IPv6 map, any other to the IPv4 one; reads cover both."""

    def __init__(self, ipv4: TypedMap[Any, V], ipv6: TypedMap[Any, V]) -> None:
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self.name = ipv4.name
        self.capacity = ipv4.capacity

    def _of(self, key: Any) -> TypedMap[Any, V]:
        return self.ipv6 if isinstance(key, self.ipv6.key_type) else self.ipv4

    def lookup(self, key: Any) -> V | None:
        return self._of(key).lookup(key)

    def update(self, key: Any, value: V) -> None:
        self._of(key).update(key, value)

    def delete(self, key: Any) -> bool:
        return self._of(key).delete(key)

    def items(self) -> Iterator[tuple[Any, V]]:
        yield from self.ipv4.items()
        yield from self.ipv6.items()

    def clear(self) -> None:
        self.ipv4.clear()
        self.ipv6.clear()

    def __len__(self) -> int:
        return len(self.ipv4) + len(self.ipv6)
