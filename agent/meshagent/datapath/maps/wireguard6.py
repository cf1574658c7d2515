"""ma_wg_remote6: remote nodes' IPv6 pod ranges, for node-to-node encryption of pods' IPv6 traffic
(bpf/lib/wireguard6.h). Its values, the mode and the counters are those of the IPv4 maps (wireguard.py)."""

from __future__ import annotations

import ctypes
from ipaddress import IPv6Address, IPv6Network

REMOTE_MAP = "ma_wg_remote6"

Addr6 = ctypes.c_uint8 * 16  # an IPv6 address in network order, as on the wire


class Remote6Key(ctypes.Structure):
    """Must match struct ma_wg_remote6_key in bpf/lib/wireguard6.h (LPM key, address in network order)."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr_net", Addr6)]

    @classmethod
    def of(cls, network: IPv6Network) -> Remote6Key:
        return cls(
            prefixlen=network.prefixlen, addr_net=Addr6.from_buffer_copy(network.network_address.packed)
        )

    def network(self) -> IPv6Network:
        return IPv6Network((IPv6Address(bytes(self.addr_net)), self.prefixlen))


# C field names for the layout check, where ours differ (byte order in the name).
C_FIELD_NAMES = {"addr_net": "addr"}
