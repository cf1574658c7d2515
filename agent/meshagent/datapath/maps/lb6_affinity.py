"""ma_lb6_affinity: (client network namespace, IPv6 Service frontend) -> backend last used (LRU hash)."""

from __future__ import annotations

import ctypes

from meshagent.datapath.maps.lb6_services import Addr6

MAP_NAME = "ma_lb6_affinity"


class AffinityKey6(ctypes.Structure):
    """Must match struct ma_lb6_affinity_key in bpf/lib/lb6_types.h."""

    _fields_ = [
        ("netns_cookie", ctypes.c_uint64),
        ("addr_net", Addr6),
        ("port_net", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("pad2", ctypes.c_uint32),
    ]


class AffinityValue6(ctypes.Structure):
    """Must match struct ma_lb6_affinity_value in bpf/lib/lb6_types.h."""

    _fields_ = [
        ("last_used_ns", ctypes.c_uint64),
        ("backend_addr_net", Addr6),
        ("backend_port_net", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("pad2", ctypes.c_uint32),
    ]


C_FIELD_NAMES = {
    "addr_net": "addr",
    "port_net": "port",
    "backend_addr_net": "backend_addr",
    "backend_port_net": "backend_port",
}
