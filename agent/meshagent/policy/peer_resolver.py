"""Peers of policy rules resolved to identities, and kept resolved as the cluster changes.

Selector peers are kept up to date per identity that comes or goes; ipBlock peers are re-resolved when a
pod address or a policy prefix inside them changes.

A pod's identity covers both of its addresses, while an ipBlock is of one family. So a block alone takes a
pod identity only when the block holds every address of every pod of it; a block that holds only the
members' addresses of its own family covers that family, and a rule takes the identity when its blocks
together cover every family its pods have addresses in (a dual-stack pod needs an IPv4 and an IPv6 block
in the same rule). Otherwise the rule does not match those pods: an IPv4 block must never let a pod's
IPv6 traffic through. Every change returns the peers whose identities
moved, with the identities that moved, so the compiler recompiles only the entries of those identities.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from meshagent.model.ip import IPAddress, IPNetwork
from meshagent.policy.cluster_store import ClusterStore
from meshagent.policy.peers import BlockPeer, PeerSpec, SelectorPeer
from meshagent.policy.rules import RuleKind

PolicyKey = tuple[RuleKind, str, str]  # (kind, namespace or "", name)
Moved = list[tuple[PeerSpec, frozenset[int]]]


@dataclass(frozen=True)
class _BlockPeers:
    """What one ipBlock resolves to: identities it takes alone, and (identity, family) pairs it covers."""

    whole: frozenset[int] = frozenset()
    partial: frozenset[tuple[int, int]] = frozenset()

    def moved(self, other: _BlockPeers) -> frozenset[int]:
        return (self.whole ^ other.whole) | frozenset(ident for ident, _ in self.partial ^ other.partial)


class PeerResolver:
    def __init__(self, store: ClusterStore) -> None:
        self._store = store
        self._users: dict[PeerSpec, set[PolicyKey]] = defaultdict(set)
        self._selectors: dict[SelectorPeer, set[int]] = {}
        self._selectors_frozen: dict[SelectorPeer, frozenset[int]] = {}  # read copies, dropped on change
        self._blocks: dict[BlockPeer, _BlockPeers] = {}

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
        return [(spec, old.moved(new))] if old != new else []

    # ----------------------------------------------------------------- resolution

    def resolve(self, spec: PeerSpec) -> frozenset[int]:
        """The identities `spec` takes on its own."""
        if isinstance(spec, SelectorPeer):
            frozen = self._selectors_frozen.get(spec)
            if frozen is None:
                frozen = self._selectors_frozen[spec] = frozenset(self._selectors[spec])
            return frozen
        return self._block(spec).whole

    def _block(self, spec: BlockPeer) -> _BlockPeers:
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
        covered: dict[int, set[int]] = {}
        for spec in specs:
            result |= self.resolve(spec)
            if isinstance(spec, BlockPeer):
                for ident, family in self._block(spec).partial:
                    covered.setdefault(ident, set()).add(family)
        for ident, families in covered.items():
            if ident not in result and families >= self._families(ident):
                result.add(ident)
        return frozenset(result)

    def _families(self, ident: int) -> set[int]:
        return {ip.version for ip in self._store.member_ips(ident)}

    def _resolve_block(self, spec: BlockPeer) -> _BlockPeers:
        store = self._store
        block = spec.block
        whole: set[int] = set()
        for prefix in store.addresses.prefixes_within(block.cidr):
            if not store.shadowed(prefix) and block.contains(prefix):
                whole.add(store.identities.cidr_identity(prefix))
        # Pod IPs are host prefixes in the ipcache, so a packet from a pod carries the pod's identity:
        # take that identity when every address of its pods in the block's family is inside the block
        # (never more than the block allows); alone when the pods have no address of another family.
        candidates = {
            store.pod_identity[k]
            for ip in store.addresses.pod_ips_within(block.cidr)
            for k in store.addresses.pods_at(ip)
        }
        family = block.cidr.version
        partial: set[tuple[int, int]] = set()
        for ident in candidates:
            ips = store.member_ips(ident)
            own = [ip for ip in ips if ip.version == family]
            if not own or not all(block.contains_address(ip) for ip in own):
                continue
            if len(own) == len(ips):
                whole.add(ident)
            else:
                partial.add((ident, family))
        return _BlockPeers(frozenset(whole), frozenset(partial))
