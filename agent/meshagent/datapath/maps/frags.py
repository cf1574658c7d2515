"""ma_frags: ports of fragmented datagrams, learnt from their first fragment (LRU hash)."""

from __future__ import annotations

import ctypes

MAP_NAME = "ma_frags"


class FragKey(ctypes.Structure):
    """Must match struct ma_frag_key in bpf/lib/types.h."""

    _fields_ = [
        ("saddr_net", ctypes.c_uint32),
        ("daddr_net", ctypes.c_uint32),
        ("ip_id", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class FragValue(ctypes.Structure):
    """Must match struct ma_frag_value in bpf/lib/types.h."""

    _fields_ = [("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16)]


C_FIELD_NAMES = {"saddr_net": "saddr", "daddr_net": "daddr"}
