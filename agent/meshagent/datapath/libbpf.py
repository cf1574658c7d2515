"""The bpf syscall's map operations through libbpf (ctypes), without BCC.

Loading BCC's library maps LLVM and clang into the process: about 60 MiB resident before it compiles
anything. The agent itself only reads and writes maps by descriptor, which libbpf does as well.
libbpf's functions return a negative error number and set errno (read with ctypes.get_errno).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

lib = ctypes.CDLL("libbpf.so.1", use_errno=True)

for _name, _args in (
    ("bpf_map_lookup_elem", [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    ("bpf_map_update_elem", [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]),
    ("bpf_map_delete_elem", [ctypes.c_int, ctypes.c_void_p]),
    ("bpf_map_get_next_key", [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
):
    getattr(lib, _name).argtypes = _args
    getattr(lib, _name).restype = ctypes.c_int


def address(value: ctypes._CData | None) -> int | None:
    """The address of a ctypes object, for the void pointers above (None stays NULL)."""
    return None if value is None else ctypes.addressof(value)


@functools.cache
def possible_cpus() -> int:
    """CPUs the kernel may bring up (/sys/devices/system/cpu/possible, e.g. "0-3" or "0,2-5"): a per-CPU
    map holds one value for each of them."""
    count = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count
