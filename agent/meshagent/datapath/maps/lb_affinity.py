"""ma_lb_affinity: (client network namespace, Service frontend) -> backend last used (LRU hash)."""

from __future__ import annotations

import ctypes

MAP_NAME = "ma_lb_affinity"


class AffinityKey(ctypes.Structure):
    """Must match struct ma_lb_affinity_key in bpf/lib/lb_types.h."""

    _fields_ = [
        ("netns_cookie", ctypes.c_uint64),
        ("addr_net", ctypes.c_uint32),
        ("port_net", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class AffinityValue(ctypes.Structure):
    """Must match struct ma_lb_affinity_value in bpf/lib/lb_types.h."""

    _fields_ = [
        ("last_used_ns", ctypes.c_uint64),
        ("backend_addr_net", ctypes.c_uint32),
        ("backend_port_net", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


C_FIELD_NAMES = {
    "addr_net": "addr",
    "port_net": "port",
    "backend_addr_net": "backend_addr",
    "backend_port_net": "backend_port",
}
