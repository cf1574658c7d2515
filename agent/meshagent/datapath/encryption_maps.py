"""The datapath's part of node-to-node encryption: the mode and device the endpoint programs judge by,
the remote nodes' pod ranges, and the per-node counters of encrypted and plaintext traffic."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from meshagent.datapath.maps import wireguard as wg
from meshagent.datapath.maps.base import TypedMap
from meshagent.model.kernel_state import Direction


@dataclass(frozen=True)
class PairCounters:
    """Traffic between this node's pods and one remote node, one direction, encrypted or not."""

    node_id: int
    direction: Direction
    encrypted: bool
    packets: int
    bytes: int
    flows: int


class EncryptionMaps:
    def __init__(self, map_fd: Callable[[str], int]) -> None:
        """`map_fd` gives the descriptor of a map of the loaded programs by name (the descriptors stay
        the caller's)."""

        def typed(name: str, key: type[Any], value: type[Any], capacity: int) -> TypedMap[Any, Any]:
            return TypedMap(name=name, fd=map_fd(name), key_type=key, value_type=value, capacity=capacity)

        self.config = typed(wg.CONFIG_MAP, _Index, wg.ConfigValue, 1)
        self.remote = typed(wg.REMOTE_MAP, wg.RemoteKey, wg.RemoteValue, wg.REMOTE_CAPACITY)
        self.stats = typed(wg.STATS_MAP, wg.StatsKey, wg.StatsValue, wg.STATS_CAPACITY)
        self._lock = threading.Lock()

    def set_mode(self, mode: str, ifindex: int | None) -> None:
        self.config.update(_Index(0), wg.ConfigValue(mode=wg.MODE_VALUES[mode], ifindex=ifindex or 0))

    def mode(self) -> tuple[int, int]:
        value = self.config.lookup(_Index(0))
        return (value.mode, value.ifindex) if value is not None else (0, 0)

    def set_remote(self, ranges: dict[str, tuple[IPv4Network, ...]]) -> None:
        """Remote nodes' pod ranges, by node name: written first, then what is no longer wanted goes."""
        with self._lock:
            wanted = {
                (network.network_address, network.prefixlen): wg.node_id(name)
                for name, networks in ranges.items()
                for network in networks
            }
            for (address, prefixlen), ident in wanted.items():
                key = wg.RemoteKey.of(IPv4Network(f"{address}/{prefixlen}"))
                have = self.remote.lookup(key)
                if have is None or have.node_id != ident:
                    self.remote.update(key, wg.RemoteValue(node_id=ident, flags=0))
            present = self.remote.keys()  # a snapshot: deleting while walking the map would skip keys
            for key in present:
                network = key.network()
                if (network.network_address, network.prefixlen) not in wanted:
                    self.remote.delete(key)

    def counters(self) -> list[PairCounters]:
        return [
            PairCounters(
                node_id=key.node_id,
                direction=Direction(key.direction),
                encrypted=bool(key.encrypted),
                packets=value.packets,
                bytes=value.bytes,
                flows=value.flows,
            )
            for key, value in self.stats.items()
        ]


class _Index(ctypes.Structure):
    """The __u32 key of an array map."""

    _fields_ = [("index", ctypes.c_uint32)]
