"""ma_ct_tcp and ma_ct: connection tracking entries, keyed per endpoint interface and connection.

TCP connections begun by a SYN live in ma_ct_tcp (a hash that never evicts); everything else in ma_ct
(LRU): see bpf/lib/conntrack.h. Both have the same key and value."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from meshagent.datapath.maps.ipcache import addr_from_net
from meshagent.model.kernel_state import user_identity

MAP_NAME = "ma_ct"
TCP_MAP_NAME = "ma_ct_tcp"
TCP_OVERFLOW_MAP_NAME = "ma_ct_tcp_overflow"  # per-CPU count of SYNs that went to ma_ct: ma_ct_tcp was full

# MA_CT_F_* in bpf/lib/types.h
FLAG_FIN_FWD = 0x01
FLAG_FIN_REV = 0x02
FLAG_CLOSED = 0x04
FLAG_SEQ_FWD = 0x08
FLAG_SEQ_REV = 0x10
FLAG_MIDSTREAM = 0x20


class CTKey(ctypes.Structure):
    """Must match struct ma_ct_key in bpf/lib/types.h."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("saddr_net", ctypes.c_uint32),
        ("daddr_net", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class CTValue(ctypes.Structure):
    """Must match struct ma_ct_value in bpf/lib/types.h."""

    _fields_ = [
        ("packets_fwd", ctypes.c_uint64),
        ("bytes_fwd", ctypes.c_uint64),
        ("packets_rev", ctypes.c_uint64),
        ("bytes_rev", ctypes.c_uint64),
        ("created_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("rule_id", ctypes.c_uint32),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("verdict", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        # Appended after the fields above, so an older entry is a prefix of this one (migration.py).
        ("next_seq_fwd", ctypes.c_uint32),
        ("next_seq_rev", ctypes.c_uint32),
    ]


C_FIELD_NAMES = {"saddr_net": "saddr", "daddr_net": "daddr"}


@dataclass(frozen=True)
class Connection:
    """A conntrack entry as the agent reads it (host order)."""

    ifindex: int
    saddr: IPv4Address | IPv6Address
    daddr: IPv4Address | IPv6Address
    sport: int
    dport: int
    proto: int
    packets_fwd: int
    bytes_fwd: int
    packets_rev: int
    bytes_rev: int
    created_ns: int
    last_seen_ns: int
    rule_id: int
    src_identity: int
    dst_identity: int
    direction: int
    verdict: int
    flags: int
    tcp_flags: int
    next_seq_fwd: int = 0
    next_seq_rev: int = 0

    @property
    def closed(self) -> bool:
        return bool(self.flags & FLAG_CLOSED)

    @property
    def midstream(self) -> bool:
        """A TCP connection first seen without its SYN (judged by policy then)."""
        return bool(self.flags & FLAG_MIDSTREAM)


def decode(key: CTKey, value: CTValue) -> Connection:
    return connection(key, value, addr_from_net(key.saddr_net), addr_from_net(key.daddr_net))


def connection(
    key: Any, value: CTValue, saddr: IPv4Address | IPv6Address, daddr: IPv4Address | IPv6Address
) -> Connection:
    """An entry of either family's table (the keys differ only in their addresses, decoded by the caller)."""
    return Connection(
        ifindex=key.ifindex,
        saddr=saddr,
        daddr=daddr,
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
        # IPv6 peers carry their pod identity marked for the policy map: users see the pod's identity.
        src_identity=user_identity(value.src_identity),
        dst_identity=user_identity(value.dst_identity),
        direction=value.direction,
        verdict=value.verdict,
        flags=value.flags,
        tcp_flags=value.tcp_flags,
        next_seq_fwd=value.next_seq_fwd,
        next_seq_rev=value.next_seq_rev,
    )


@dataclass(frozen=True)
class Timeouts:
    """How long an idle entry lives (seconds). A TCP connection closed by FIN both ways keeps its entry a
    little for the last ACK; one that just went quiet is kept long, like the kernel's own conntrack."""

    tcp: float = 6 * 3600.0
    tcp_closed: float = 10.0
    # TCP that never had a reply (a SYN unanswered, or a mid-stream segment nobody answers): a spray of
    # them must not hold ma_ct_tcp for hours.
    tcp_unanswered: float = 60.0
    udp: float = 60.0
    icmp: float = 30.0
    other: float = 60.0

    def for_entry(self, proto: int, flags: int, *, answered: bool = True) -> float:
        if proto == 6:
            if flags & FLAG_CLOSED:
                return self.tcp_closed
            return self.tcp if answered else self.tcp_unanswered
        if proto == 17:
            return self.udp
        if proto == 1:
            return self.icmp
        return self.other
