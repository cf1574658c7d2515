"""ma_frags6: ports of fragmented IPv6 datagrams, learnt from their first fragment (LRU hash)."""

from __future__ import annotations

import ctypes

from meshagent.datapath.maps.frags import FragValue as FragValue
from meshagent.datapath.maps.ipcache import Addr6

MAP_NAME = "ma_frags6"


class Frag6Key(ctypes.Structure):
    """Must match struct ma_frag6_key in bpf/lib/types6.h."""

    _fields_ = [
        ("saddr_net", Addr6),
        ("daddr_net", Addr6),
        ("id", ctypes.c_uint32),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


C_FIELD_NAMES = {"saddr_net": "saddr", "daddr_net": "daddr"}
