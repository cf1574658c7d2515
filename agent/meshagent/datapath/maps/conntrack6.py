"""ma_ct6_tcp and ma_ct6: IPv6 connection tracking, with the value of ma_ct (conntrack.py)."""

from __future__ import annotations

import ctypes

from meshagent.datapath.maps import conntrack
from meshagent.datapath.maps.conntrack import Connection, CTKey, CTValue, connection
from meshagent.datapath.maps.ipcache import Addr6, addr6_from_net

MAP_NAME = "ma_ct6"
TCP_MAP_NAME = "ma_ct6_tcp"


class CT6Key(ctypes.Structure):
    """Must match struct ma_ct6_key in bpf/lib/types6.h."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("saddr_net", Addr6),
        ("daddr_net", Addr6),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


C_FIELD_NAMES = {"saddr_net": "saddr", "daddr_net": "daddr"}


def decode(key: CT6Key, value: CTValue) -> Connection:
    return connection(key, value, addr6_from_net(key.saddr_net), addr6_from_net(key.daddr_net))


def decode_any(key: CTKey | CT6Key, value: CTValue) -> Connection:
    """An entry of any of the four conntrack maps."""
    return decode(key, value) if isinstance(key, CT6Key) else conntrack.decode(key, value)
