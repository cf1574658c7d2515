"""ma_wg_config, ma_wg_remote, ma_wg_stats: node-to-node encryption in the endpoint programs
(bpf/lib/wireguard.h)."""

from __future__ import annotations

import ctypes
import socket
import struct
import zlib
from ipaddress import IPv4Network

CONFIG_MAP = "ma_wg_config"
REMOTE_MAP = "ma_wg_remote"
STATS_MAP = "ma_wg_stats"
REMOTE_CAPACITY = 4096  # MA_WG_REMOTE_MAX
STATS_CAPACITY = REMOTE_CAPACITY * 4

# MA_WG_MODE_*, by the names of meshagent.wireguard.modes.EncryptionMode
MODE_VALUES = {"off": 0, "permissive": 1, "strict": 2}


class ConfigValue(ctypes.Structure):
    """Must match struct ma_wg_config in bpf/lib/wireguard.h."""

    _fields_ = [("mode", ctypes.c_uint32), ("ifindex", ctypes.c_uint32)]


class RemoteKey(ctypes.Structure):
    """Must match struct ma_wg_remote_key in bpf/lib/wireguard.h (LPM key, address in network order)."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint32)]

    @classmethod
    def of(cls, network: IPv4Network) -> RemoteKey:
        addr_net = struct.unpack("=I", socket.inet_aton(str(network.network_address)))[0]
        return cls(prefixlen=network.prefixlen, addr=addr_net)

    def network(self) -> IPv4Network:
        return IPv4Network(f"{socket.inet_ntoa(struct.pack('=I', self.addr))}/{self.prefixlen}")


class RemoteValue(ctypes.Structure):
    """Must match struct ma_wg_remote_value in bpf/lib/wireguard.h."""

    _fields_ = [("node_id", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class StatsKey(ctypes.Structure):
    """Must match struct ma_wg_stats_key in bpf/lib/wireguard.h."""

    _fields_ = [
        ("node_id", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("encrypted", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class StatsValue(ctypes.Structure):
    """Must match struct ma_wg_stats_value in bpf/lib/wireguard.h."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64), ("flows", ctypes.c_uint64)]


def node_id(name: str) -> int:
    """The id the datapath counts a remote node by: the same for the same name in every agent run."""
    return zlib.crc32(name.encode()) & 0xFFFFFFFF
