"""ma_ct6_tcp and ma_ct6: IPv6 connection tracking, with the value of ma_ct (conntrack.py)."""

from __future__ import annotations

import ctypes

from meshagent.datapath.maps import conntrack
from meshagent.datapath.maps.conntrack import Connection, CTKey, CTValue
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
    return Connection(
        ifindex=key.ifindex,
        saddr=addr6_from_net(key.saddr_net),
        daddr=addr6_from_net(key.daddr_net),
        sport=key.sport,
        dport=key.dport,
        proto=key.proto,
        packets_fwd=value.packets_fwd,
        bytes_fwd=value.bytes_fwd,
        packets_rev=value.packets_rev,
        bytes_rev=value.bytes_rev,
        created_ns=value.created_ns,
        last_seen_ns=value.last_seen_ns,
        rule_id=value.rule_id,
        src_identity=value.src_identity,
        dst_identity=value.dst_identity,
        direction=value.direction,
        verdict=value.verdict,
        flags=value.flags,
        tcp_flags=value.tcp_flags,
        next_seq_fwd=value.next_seq_fwd,
        next_seq_rev=value.next_seq_rev,
    )


def decode_any(key: CTKey | CT6Key, value: CTValue) -> Connection:
    """An entry of any of the four conntrack maps."""
    return decode(key, value) if isinstance(key, CT6Key) else conntrack.decode(key, value)
