"""Peers of rules as hashable specs (shared by every rule that names the same peer) and their matching."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshagent.model.admin_policy import AdminNetworkPolicy, AdminRule, AdminSelector
from meshagent.model.ip import IPNetwork
from meshagent.model.netpol import IPBlock, NetworkPolicy, PolicyRule
from meshagent.model.selectors import LabelSelector


@dataclass(frozen=True)
class SelectorPeer:
    """Pods by labels. `namespace` set: only pods of that namespace (a NetworkPolicy podSelector-only peer);
    `namespace_selector` None with `namespace` None: every namespace."""

    namespace: str | None
    namespace_selector: LabelSelector | None
    pod_selector: LabelSelector | None

    def matches(
        self, namespace: str, namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]
    ) -> bool:
        if self.namespace is not None and namespace != self.namespace:
            return False
        if self.namespace_selector is not None and not self.namespace_selector.matches(namespace_labels):
            return False
        return self.pod_selector is None or self.pod_selector.matches(pod_labels)


@dataclass(frozen=True)
class BlockPeer:
    block: IPBlock


PeerSpec = SelectorPeer | BlockPeer


def np_rule_specs(policy: NetworkPolicy, rule: PolicyRule) -> tuple[PeerSpec, ...] | None:
    """None: the rule names no peers (every peer)."""
    if rule.peers is None:
        return None
    specs: list[PeerSpec] = []
    for peer in rule.peers:
        if peer.ip_block is not None:
            specs.append(BlockPeer(peer.ip_block))
        else:
            specs.append(
                SelectorPeer(
                    namespace=policy.namespace if peer.namespace_selector is None else None,
                    namespace_selector=peer.namespace_selector,
                    pod_selector=peer.pod_selector,
                )
            )
    return tuple(specs)


def admin_selector_specs(selector: AdminSelector) -> tuple[PeerSpec, ...]:
    if selector.networks:
        return tuple(BlockPeer(IPBlock(net)) for net in selector.networks)
    return (SelectorPeer(None, selector.namespace_selector, selector.pod_selector),)


def admin_rule_specs(rule: AdminRule) -> tuple[PeerSpec, ...]:
    return tuple(spec for peer in rule.peers for spec in admin_selector_specs(peer))


def policy_specs(policy: NetworkPolicy | AdminNetworkPolicy) -> set[PeerSpec]:
    specs: set[PeerSpec] = set()
    if isinstance(policy, NetworkPolicy):
        for np_rule in (*policy.ingress, *policy.egress):
            specs.update(np_rule_specs(policy, np_rule) or ())
    else:
        for admin_rule in (*policy.ingress, *policy.egress):
            specs.update(admin_rule_specs(admin_rule))
    return specs


def policy_prefixes(policy: NetworkPolicy | AdminNetworkPolicy) -> set[IPNetwork]:
    """Prefixes the ipcache must hold for this policy: ipBlock cidrs, their excepts, admin networks."""
    prefixes: set[IPNetwork] = set()
    for spec in policy_specs(policy):
        if isinstance(spec, BlockPeer):
            prefixes.add(spec.block.cidr)
            prefixes.update(spec.block.excepts)
    return prefixes


def has_egress_named_ports(policy: NetworkPolicy | AdminNetworkPolicy) -> bool:
    if isinstance(policy, NetworkPolicy):
        return any(p.name is not None for r in policy.egress for p in r.ports)
    return any(p.name is not None for r in policy.egress for p in r.ports)
