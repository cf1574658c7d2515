"""ma_lb6_revnat: (socket cookie, IPv6 backend) -> the IPv6 Service address the socket asked for (LRU)."""

from __future__ import annotations

import ctypes

from meshagent.datapath.maps.lb6_services import Addr6

MAP_NAME = "ma_lb6_revnat"


class RevNatKey6(ctypes.Structure):
    """Must match struct ma_lb6_revnat_key in bpf/lib/lb6_types.h."""

    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("backend_addr_net", Addr6),
        ("backend_port_net", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("pad2", ctypes.c_uint32),
    ]


class RevNatValue6(ctypes.Structure):
    """Must match struct ma_lb6_revnat_value in bpf/lib/lb6_types.h."""

    _fields_ = [
        ("addr_net", Addr6),
        ("port_net", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


C_FIELD_NAMES = {
    "backend_addr_net": "backend_addr",
    "backend_port_net": "backend_port",
    "addr_net": "addr",
    "port_net": "port",
}
