"""ma_ipcache and ma_ipcache6: address prefix -> identity (LPM tries), one per address family.

The IPv6 trie has a key of its own (16-byte address) and the same value: identities are the same for
both families. `encode` picks the key by the entry's family."""

from __future__ import annotations

import ctypes
import socket
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from meshagent.model.kernel_state import IPCacheEntry

MAP_NAME = "ma_ipcache"
MAP_NAME6 = "ma_ipcache6"

Addr6 = ctypes.c_uint8 * 16  # an IPv6 address in network order, as on the wire


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


class IPCache6Key(ctypes.Structure):
    """Must match struct ma_ipcache6_key in bpf/lib/types6.h."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("addr_net", Addr6),
    ]


# C field names for the layout check, where ours differ (byte order in the name).
C_FIELD_NAMES = {"addr_net": "addr"}


def addr_to_net(address: IPv4Address) -> int:
    """An address as the u32 the kernel stores in network order, read natively."""
    value: int = struct.unpack("=I", socket.inet_aton(str(address)))[0]
    return value


def addr_from_net(value: int) -> IPv4Address:
    return IPv4Address(socket.inet_ntoa(struct.pack("=I", value)))


def addr6_to_net(address: IPv6Address) -> ctypes.Array[ctypes.c_uint8]:
    return Addr6.from_buffer_copy(address.packed)


def addr6_from_net(raw: ctypes.Array[ctypes.c_uint8]) -> IPv6Address:
    return IPv6Address(bytes(raw))


def encode(entry: IPCacheEntry) -> tuple[IPCacheKey | IPCache6Key, IPCacheValue]:
    """The key in the trie of the entry's family (IPCache6Key for ma_ipcache6)."""
    value = IPCacheValue(entry.identity, 0)
    if isinstance(entry.cidr, IPv6Network):
        return IPCache6Key(entry.cidr.prefixlen, addr6_to_net(entry.cidr.network_address)), value
    return IPCacheKey(entry.cidr.prefixlen, addr_to_net(entry.cidr.network_address)), value


def decode(key: IPCacheKey | IPCache6Key, value: IPCacheValue) -> IPCacheEntry:
    if isinstance(key, IPCache6Key):
        network6 = IPv6Network((addr6_from_net(key.addr_net), key.prefixlen))
        return IPCacheEntry(cidr=network6, identity=value.identity)
    network = IPv4Network((addr_from_net(key.addr_net), key.prefixlen))
    return IPCacheEntry(cidr=network, identity=value.identity)
