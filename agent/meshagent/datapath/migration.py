"""Moving from another build's map layout to ours without a gap.

An agent that finds only other layouts' map directories (datapath/layout.py) attaches nothing at load:
the old programs keep enforcing with the old maps. On its first full apply it first copies the old
conntrack entries of both families (when their entry layout is ours), so that established connections
are not judged again by the new programs; the apply then attaches the new programs in place; then the old
programs are detached from interfaces that are no longer endpoints and the old maps are removed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from meshagent.datapath import tc
from meshagent.datapath.errors import DatapathError, MapError
from meshagent.datapath.maps import conntrack, conntrack6
from meshagent.datapath.maps.base import TypedMap
from meshagent.datapath.pinned import PinnedMaps, map_sizes, open_pinned

logger = logging.getLogger(__name__)


class LayoutMigration:
    def __init__(self, old_dirs: list[Path], *, netns: str | None) -> None:
        self.old_dirs = old_dirs
        self.netns = netns
        self.carried = 0

    def carry_connections(
        self,
        *,
        tcp: TypedMap[Any, Any],
        other: TypedMap[Any, Any],
        tcp6: TypedMap[Any, Any] | None = None,
        other6: TypedMap[Any, Any] | None = None,
    ) -> int:
        """Copies the old layouts' conntrack entries: TCP ones into `tcp`, the rest into `other`, and
        IPv6 ones likewise into `tcp6` and `other6`. An old layout may keep TCP in a table of its own or
        not, and layouts from before IPv6 have no IPv6 tables."""
        tables: list[tuple[str, type[ctypes.Structure], TypedMap[Any, Any], TypedMap[Any, Any]]] = [
            (conntrack.TCP_MAP_NAME, conntrack.CTKey, tcp, other),
            (conntrack.MAP_NAME, conntrack.CTKey, tcp, other),
        ]
        if tcp6 is not None and other6 is not None:
            tables += [
                (conntrack6.TCP_MAP_NAME, conntrack6.CT6Key, tcp6, other6),
                (conntrack6.MAP_NAME, conntrack6.CT6Key, tcp6, other6),
            ]
        for old_dir in self.old_dirs:
            for name, key_type, tcp_table, other_table in tables:
                if not (old_dir / name).exists():
                    continue
                try:
                    self.carried += _copy_conntrack(
                        old_dir / name, key_type=key_type, tcp=tcp_table, other=other_table
                    )
                except MapError as err:
                    logger.warning("connections in %s not carried over: %s", old_dir / name, err)
        return self.carried

    def retire(self, attached: set[int]) -> None:
        """Detaches the old programs from interfaces that are no longer endpoints (`attached` are ours
        now, replaced in place), and removes the old maps."""
        for old_dir in self.old_dirs:
            try:
                with PinnedMaps(old_dir) as old:
                    old_endpoints = set(old.state()[0])
            except MapError as err:
                logger.warning("old maps in %s unreadable (%s): removing them", old_dir, err)
                old_endpoints = set()
            for ifindex in old_endpoints - attached:
                try:
                    tc.detach(ifindex=ifindex, netns=self.netns)
                except DatapathError as err:
                    logger.warning("old programs on ifindex %d not detached: %s", ifindex, err)
            shutil.rmtree(old_dir, ignore_errors=True)
            logger.info("migrated from %s", old_dir.name)
        logger.info("map layout migration done: %d connections carried over", self.carried)


def prefix_value_type(size: int) -> type[ctypes.Structure] | None:
    """A ctypes type for an old entry of `size` bytes: ours, or the longest prefix of ours (fields are
    only ever appended to struct ma_ct_value) that is that size with its padding. None for any other
    layout."""
    if size == ctypes.sizeof(conntrack.CTValue):
        return conntrack.CTValue
    found = None
    fields = []
    for field in conntrack.CTValue._fields_:
        fields.append((field[0], field[1]))
        prefix = type("OldCTValue", (ctypes.Structure,), {"_fields_": list(fields)})
        if ctypes.sizeof(prefix) == size:
            found = prefix
        elif ctypes.sizeof(prefix) > size:
            break
    return found


def _copy_conntrack(
    path: Path, *, key_type: type[ctypes.Structure], tcp: TypedMap[Any, Any], other: TypedMap[Any, Any]
) -> int:
    old_fd = open_pinned(path)
    try:
        old_key, old_value = map_sizes(old_fd)
        value_type = prefix_value_type(old_value)
        if old_key != ctypes.sizeof(key_type) or value_type is None:
            return 0  # another entry layout: those connections will be judged again
        old_ct = TypedMap(
            name="old " + path.name,
            fd=old_fd,
            key_type=key_type,
            value_type=value_type,
            capacity=0,
        )
        copied = 0
        for key, old in old_ct.items():
            # The appended fields start zeroed: sequence numbers unknown, learnt from the next segments.
            value = conntrack.CTValue()
            ctypes.memmove(ctypes.addressof(value), ctypes.addressof(old), ctypes.sizeof(old))
            table = tcp if key.proto == 6 and not value.flags & conntrack.FLAG_MIDSTREAM else other
            try:
                table.update(key, value)
                copied += 1
            except MapError:
                try:
                    other.update(key, value)  # the TCP table is full: the LRU one takes it
                    copied += 1
                except MapError:
                    break
        return copied
    finally:
        os.close(old_fd)
