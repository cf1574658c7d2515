"""Moving from another build's map layout to ours without a gap.

An agent that finds only other layouts' map directories (datapath/layout.py) attaches nothing at load:
the old programs keep enforcing with the old maps. On its first full apply it first copies the old
conntrack entries (when their entry layout is ours), so that established connections are not judged again
by the new programs; the apply then attaches the new programs in place; then the old programs are detached
from interfaces that are no longer endpoints and the old maps are removed.
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
from meshagent.datapath.maps import conntrack
from meshagent.datapath.maps.base import TypedMap
from meshagent.datapath.pinned import PinnedMaps, map_sizes, open_pinned

logger = logging.getLogger(__name__)


class LayoutMigration:
    def __init__(self, old_dirs: list[Path], *, netns: str | None) -> None:
        self.old_dirs = old_dirs
        self.netns = netns
        self.carried = 0

    def carry_connections(self, ct_map: TypedMap[Any, Any]) -> int:
        """Copies the old layouts' conntrack entries into `ct_map` where the entry layout is the same."""
        for old_dir in self.old_dirs:
            try:
                self.carried += _copy_conntrack(old_dir, ct_map)
            except MapError as err:
                logger.warning("connections in %s not carried over: %s", old_dir, err)
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


def _copy_conntrack(old_dir: Path, ct_map: TypedMap[Any, Any]) -> int:
    old_fd = open_pinned(old_dir / conntrack.MAP_NAME)
    try:
        old_key, old_value = map_sizes(old_fd)
        if (old_key, old_value) != (ctypes.sizeof(conntrack.CTKey), ctypes.sizeof(conntrack.CTValue)):
            return 0  # another entry layout: those connections will be judged again
        old_ct = TypedMap(
            name="old " + conntrack.MAP_NAME,
            fd=old_fd,
            key_type=conntrack.CTKey,
            value_type=conntrack.CTValue,
            capacity=0,
        )
        copied = 0
        for key, value in old_ct.items():
            try:
                ct_map.update(key, value)
                copied += 1
            except MapError:
                break
        return copied
    finally:
        os.close(old_fd)
