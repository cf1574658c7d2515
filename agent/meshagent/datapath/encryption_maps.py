"""The datapath's part of node-to-node encryption: the mode and device the endpoint programs judge by,
the remote nodes' pod ranges of both families, and the per-node counters of encrypted and plaintext
traffic (one set for both families)."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from meshagent.datapath.maps import wireguard as wg
from meshagent.datapath.maps import wireguard6 as wg6
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
        self.remote6 = typed(wg6.REMOTE_MAP, wg6.Remote6Key, wg.RemoteValue, wg.REMOTE_CAPACITY)
        self.stats = typed(wg.STATS_MAP, wg.StatsKey, wg.StatsValue, wg.STATS_CAPACITY)
        self._lock = threading.Lock()

    def set_mode(self, mode: str, ifindex: int | None) -> None:
        self.config.update(_Index(0), wg.ConfigValue(mode=wg.MODE_VALUES[mode], ifindex=ifindex or 0))

    def mode(self) -> tuple[int, int]:
        value = self.config.lookup(_Index(0))
        return (value.mode, value.ifindex) if value is not None else (0, 0)

    def set_remote(self, ranges: Mapping[str, Iterable[IPv4Network | IPv6Network]]) -> None:
        """Remote nodes' pod ranges of both families, by node name: in each family's map the wanted
        entries are written first, then what is no longer wanted goes (no moment without a range that
        stays, so strict mode never lets one through)."""
        with self._lock:
            wanted4: dict[Any, int] = {}
            wanted6: dict[Any, int] = {}
            for name, networks in ranges.items():
                for network in networks:
                    if isinstance(network, IPv6Network):
                        wanted6[network] = wg.node_id(name)
                    else:
                        wanted4[network] = wg.node_id(name)
            _sync(self.remote, wanted4, wg.RemoteKey.of)
            _sync(self.remote6, wanted6, wg6.Remote6Key.of)

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


def _sync(table: TypedMap[Any, Any], wanted: dict[Any, int], key_of: Callable[[Any], Any]) -> None:
    """`table` (an LPM map of pod ranges) holds exactly `wanted` (network -> node id) afterwards."""
    for network, ident in wanted.items():
        key = key_of(network)
        have = table.lookup(key)
        if have is None or have.node_id != ident:
            table.update(key, wg.RemoteValue(node_id=ident, flags=0))
    present = table.keys()  # a snapshot: deleting while walking the map would skip keys
    for key in present:
        if key.network() not in wanted:
            table.delete(key)


class _Index(ctypes.Structure):
    """The __u32 key of an array map."""

    _fields_ = [("index", ctypes.c_uint32)]
