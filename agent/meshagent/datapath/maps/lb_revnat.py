"""ma_lb_revnat: (socket cookie, backend) -> the Service address the socket asked for (LRU hash)."""

from __future__ import annotations

import ctypes

MAP_NAME = "ma_lb_revnat"


class RevNatKey(ctypes.Structure):
    """Must match struct ma_lb_revnat_key in bpf/lib/lb_types.h."""

    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("backend_addr_net", ctypes.c_uint32),
        ("backend_port_net", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class RevNatValue(ctypes.Structure):
    """Must match struct ma_lb_revnat_value in bpf/lib/lb_types.h."""

    _fields_ = [
        ("addr_net", ctypes.c_uint32),
        ("port_net", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


C_FIELD_NAMES = {
    "backend_addr_net": "backend_addr",
    "backend_port_net": "backend_port",
    "addr_net": "addr",
    "port_net": "port",
}
