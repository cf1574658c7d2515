"""Peers of policy rules resolved to identities, and kept resolved as the cluster changes.

Selector peers are kept up to date per identity that comes or goes; ipBlock peers are re-resolved when a
pod address or a policy prefix inside them changes.

An ipBlock matches addresses, one family at a time, while a pod identity stands for every address of its
pods. So the ipcache gives a pod's IPv6 address its identity marked (`family6_identity`): a pod identity X
judges its pods' IPv4 traffic, and X6 their IPv6 traffic. A selector peer takes X, and X6 when X has pods
with an IPv6 address. A block takes X (an IPv4 block) or X6 (an IPv6 block) when it holds every address
of X's pods in its family; a block holding only some of them does not take those pods at all (one
identity cannot tell them apart: fail closed). Every change returns the peers whose identities moved, with
the identities that moved, so the compiler recompiles only the entries of those identities.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from meshagent.model.ip import IPAddress, IPNetwork
from meshagent.model.kernel_state import family6_identity
from meshagent.policy.cluster_store import ClusterStore
from meshagent.policy.peers import BlockPeer, PeerSpec, SelectorPeer
from meshagent.policy.rules import RuleKind

PolicyKey = tuple[RuleKind, str, str]  # (kind, namespace or "", name)
Moved = list[tuple[PeerSpec, frozenset[int]]]


class PeerResolver:
    def __init__(self, store: ClusterStore) -> None:
        self._store = store
        self._users: dict[PeerSpec, set[PolicyKey]] = defaultdict(set)
        self._selectors: dict[SelectorPeer, set[int]] = {}
        self._selectors_frozen: dict[SelectorPeer, frozenset[int]] = {}  # read copies, dropped on change
        self._blocks: dict[BlockPeer, frozenset[int]] = {}

    def users(self, spec: PeerSpec) -> Iterable[PolicyKey]:
        return self._users.get(spec, ())

    # ----------------------------------------------------------------- policies using peers

    def add_user(self, key: PolicyKey, specs: Iterable[PeerSpec]) -> None:
        for spec in specs:
            users = self._users[spec]
            if not users and isinstance(spec, SelectorPeer):
                store = self._store
                self._selectors[spec] = {
                    ident
                    for ident, (ns_labels, pod_labels) in store.id_dicts.items()
                    if spec.matches(store.id_labels[ident].namespace, ns_labels, pod_labels)
                }
            users.add(key)

    def remove_user(self, key: PolicyKey, specs: Iterable[PeerSpec]) -> None:
        for spec in specs:
            users = self._users[spec]
            users.discard(key)
            if users:
                continue
            del self._users[spec]
            if isinstance(spec, SelectorPeer):
                self._selectors.pop(spec, None)
                self._selectors_frozen.pop(spec, None)
            else:
                self._blocks.pop(spec, None)

    # ----------------------------------------------------------------- cluster changes

    def identity_appeared(self, ident: int) -> Moved:
        ns_labels, pod_labels = self._store.id_dicts[ident]
        namespace = self._store.id_labels[ident].namespace
        moved: Moved = []
        for spec, ids in self._selectors.items():
            if spec.matches(namespace, ns_labels, pod_labels):
                ids.add(ident)
                self._selectors_frozen.pop(spec, None)
                moved.append((spec, frozenset({ident})))
        return moved

    def identity_vanished(self, ident: int) -> Moved:
        moved: Moved = []
        for spec, ids in self._selectors.items():
            if ident in ids:
                ids.discard(ident)
                self._selectors_frozen.pop(spec, None)
                moved.append((spec, frozenset({ident})))
        return moved

    def addresses_changed(self, ips: Iterable[IPAddress | None]) -> Moved:
        """Pods at `ips` came, went or changed identity: the ipBlock peers around them."""
        wanted = [ip for ip in ips if ip is not None]
        moved: Moved = []
        for spec in list(self._blocks):
            if any(ip in spec.block.cidr for ip in wanted):
                moved.extend(self._refresh_block(spec))
        return moved

    def prefix_changed(self, prefix: IPNetwork) -> Moved:
        moved: Moved = []
        for spec in list(self._blocks):
            if spec.block.cidr.version == prefix.version and spec.block.cidr.overlaps(prefix):
                moved.extend(self._refresh_block(spec))
        return moved

    def _refresh_block(self, spec: BlockPeer) -> Moved:
        """Re-resolve an ipBlock peer now; only the identities that moved in or out need new entries."""
        old = self._blocks[spec]
        new = self._resolve_block(spec)
        self._blocks[spec] = new
        return [(spec, old ^ new)] if old != new else []

    # ----------------------------------------------------------------- resolution

    def resolve(self, spec: PeerSpec) -> frozenset[int]:
        """The identities `spec` takes on its own."""
        if isinstance(spec, SelectorPeer):
            frozen = self._selectors_frozen.get(spec)
            if frozen is None:
                frozen = self._selectors_frozen[spec] = frozenset(self._selectors[spec])
            return frozen
        return self._block(spec)

    def _block(self, spec: BlockPeer) -> frozenset[int]:
        cached = self._blocks.get(spec)
        if cached is None:
            cached = self._resolve_block(spec)
            self._blocks[spec] = cached
        return cached

    def peers(self, specs: tuple[PeerSpec, ...] | None) -> frozenset[int] | None:
        """The identities of any of `specs`; None (any peer) when the rule names no peers."""
        if specs is None:
            return None
        result: set[int] = set()
        for spec in specs:
            if isinstance(spec, SelectorPeer):
                for ident in self.resolve(spec):
                    result.add(ident)
                    if self._store.has_ipv6_members(ident):
                        result.add(family6_identity(ident))
            else:
                result |= self._block(spec)
        return frozenset(result)

    def family6_changed(self, ident: int) -> Moved:
        """Pods of `ident` gained their first IPv6 address or lost their last: the selector peers taking
        `ident` now take its IPv6 identity too, or no longer."""
        marked = frozenset({family6_identity(ident)})
        return [(spec, marked) for spec, ids in self._selectors.items() if ident in ids]

    def _resolve_block(self, spec: BlockPeer) -> frozenset[int]:
        store = self._store
        block = spec.block
        taken: set[int] = set()
        for prefix in store.addresses.prefixes_within(block.cidr):
            if not store.shadowed(prefix) and block.contains(prefix):
                taken.add(store.identities.cidr_identity(prefix))
        # Pod IPs are host prefixes in the ipcache, so a packet from a pod carries the pod's identity (its
        # IPv6 addresses the marked one): take it when every address of its pods in the block's family is
        # inside the block (never more than the block allows).
        candidates = {
            store.pod_identity[k]
            for ip in store.addresses.pod_ips_within(block.cidr)
            for k in store.addresses.pods_at(ip)
        }
        family = block.cidr.version
        for ident in candidates:
            own = [ip for ip in store.member_ips(ident) if ip.version == family]
            if own and all(block.contains_address(ip) for ip in own):
                taken.add(family6_identity(ident) if family == 6 else ident)
        return frozenset(taken)
