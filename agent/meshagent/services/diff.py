"""The difference between what the load-balancer holds and what it should: written per frontend, so an
unchanged Service is never touched and a changed one is replaced in one map update (atomic for the
kernel: a connection sees the old backend list or the new one, never a mix)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshagent.model.services import Frontend, LBEntry


@dataclass(frozen=True)
class LBDiff:
    upserts: tuple[LBEntry, ...] = ()
    removals: tuple[Frontend, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.upserts and not self.removals


def diff(current: Mapping[Frontend, LBEntry], desired: Mapping[Frontend, LBEntry]) -> LBDiff:
    upserts = tuple(entry for key, entry in sorted(desired.items()) if current.get(key) != entry)
    removals = tuple(sorted(key for key in current if key not in desired))
    return LBDiff(upserts=upserts, removals=removals)
