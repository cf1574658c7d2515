"""A change to the kernel state, keyed the way the maps are keyed (so a changed value is an upsert)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from meshagent.model.kernel_state import EndpointEntry, IPCacheEntry, KernelState, PolicyEntry

T = TypeVar("T")


def endpoint_key(entry: EndpointEntry) -> Hashable:
    return entry.endpoint_id


def ipcache_key(entry: IPCacheEntry) -> Hashable:
    return entry.cidr


def policy_key(entry: PolicyEntry) -> Hashable:
    return (
        entry.endpoint_id,
        entry.direction,
        entry.peer_identity,
        entry.protocol,
        entry.port_lo,
        entry.port_hi,
    )


@dataclass(frozen=True)
class KernelDiff:
    """`upsert_*`: entries to write (new keys or new values); `delete_*`: entries whose key is gone.

    Write upserts before deletes are not needed: no key is in both, so the order does not open a window.
    """

    upsert_endpoints: frozenset[EndpointEntry] = frozenset()
    delete_endpoints: frozenset[EndpointEntry] = frozenset()
    upsert_ipcache: frozenset[IPCacheEntry] = frozenset()
    delete_ipcache: frozenset[IPCacheEntry] = frozenset()
    upsert_policy: frozenset[PolicyEntry] = frozenset()
    delete_policy: frozenset[PolicyEntry] = frozenset()

    @property
    def is_empty(self) -> bool:
        return not (
            self.upsert_endpoints
            or self.delete_endpoints
            or self.upsert_ipcache
            or self.delete_ipcache
            or self.upsert_policy
            or self.delete_policy
        )

    @property
    def size(self) -> int:
        return (
            len(self.upsert_endpoints)
            + len(self.delete_endpoints)
            + len(self.upsert_ipcache)
            + len(self.delete_ipcache)
            + len(self.upsert_policy)
            + len(self.delete_policy)
        )

    def apply_to(self, state: KernelState) -> KernelState:
        """The state after this diff (what the datapath holds once it applied it)."""
        return KernelState(
            endpoints=_apply(state.endpoints, self.upsert_endpoints, self.delete_endpoints, endpoint_key),
            ipcache=_apply(state.ipcache, self.upsert_ipcache, self.delete_ipcache, ipcache_key),
            policy=_apply(state.policy, self.upsert_policy, self.delete_policy, policy_key),
        )


def _apply(
    current: frozenset[T], upsert: frozenset[T], delete: frozenset[T], key: Callable[[T], Hashable]
) -> frozenset[T]:
    by_key = {key(e): e for e in current}
    for entry in delete:
        by_key.pop(key(entry), None)
    for entry in upsert:
        by_key[key(entry)] = entry
    return frozenset(by_key.values())


def diff_sets(
    old: Iterable[T], new: Iterable[T], key: Callable[[T], Hashable]
) -> tuple[frozenset[T], frozenset[T]]:
    """(upsert, delete) turning `old` into `new`."""
    old_set = frozenset(old)
    new_set = frozenset(new)
    upsert = new_set - old_set
    new_keys = {key(e) for e in new_set}
    delete = frozenset(e for e in old_set - new_set if key(e) not in new_keys)
    return upsert, delete


def diff_states(old: KernelState, new: KernelState) -> KernelDiff:
    ue, de = diff_sets(old.endpoints, new.endpoints, endpoint_key)
    ui, di = diff_sets(old.ipcache, new.ipcache, ipcache_key)
    up, dp = diff_sets(old.policy, new.policy, policy_key)
    return KernelDiff(ue, de, ui, di, up, dp)
