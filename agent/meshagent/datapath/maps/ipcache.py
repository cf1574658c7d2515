"""ma_ipcache: address prefix -> identity (LPM trie)."""

from __future__ import annotations

import ctypes
import socket
import struct
from ipaddress import IPv4Address, IPv4Network

from meshagent.model.kernel_state import IPCacheEntry

MAP_NAME = "ma_ipcache"


class IPCacheKey(ctypes.Structure):
    """Must match struct ma_ipcache_key in bpf/lib/types.h."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("addr_net", ctypes.c_uint32),  # network order
    ]


class IPCacheValue(ctypes.Structure):
    """Must match struct ma_ipcache_value in bpf/lib/types.h."""

    _fields_ = [
        ("identity", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


# C field names for the layout check, where ours differ (byte order in the name).
C_FIELD_NAMES = {"addr_net": "addr"}


def addr_to_net(address: IPv4Address) -> int:
    """An address as the u32 the kernel stores in network order, read natively."""
    value: int = struct.unpack("=I", socket.inet_aton(str(address)))[0]
    return value


def addr_from_net(value: int) -> IPv4Address:
    return IPv4Address(socket.inet_ntoa(struct.pack("=I", value)))


def encode(entry: IPCacheEntry) -> tuple[IPCacheKey, IPCacheValue]:
    key = IPCacheKey(entry.cidr.prefixlen, addr_to_net(entry.cidr.network_address))
    return key, IPCacheValue(entry.identity, 0)


def decode(key: IPCacheKey, value: IPCacheValue) -> IPCacheEntry:
    network = IPv4Network((addr_from_net(key.addr_net), key.prefixlen))
    return IPCacheEntry(cidr=network, identity=value.identity)
