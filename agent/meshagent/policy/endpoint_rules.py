"""The rules that apply to one endpoint in one direction, resolved to identities and port ranges.

Turns the policies selecting a pod into `DirectionRules` for `decide.compile_direction`: peers become
identity sets (through the compiler's caches, behind `PeerSource`), ports become ranges, named ports
resolve on the destination (ingress: the local pod's own container ports; egress: each peer identity's).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol as TypingProtocol

from meshagent.model.admin_policy import AdminNetworkPolicy, AdminPort
from meshagent.model.cluster import Pod
from meshagent.model.kernel_state import Direction, Protocol
from meshagent.model.netpol import NetworkPolicy, PolicyPort, PolicyType
from meshagent.policy.decide import PORT_MAX, PORT_MIN, AdminLayer, AllowRule, Atom, DirectionRules, PortRange
from meshagent.policy.peers import PeerSpec, admin_rule_specs, np_rule_specs
from meshagent.policy.rules import RuleKind, RuleRef

_DIRECTION_TYPE = {Direction.INGRESS: PolicyType.INGRESS, Direction.EGRESS: PolicyType.EGRESS}


class PeerSource(TypingProtocol):
    def peers(self, specs: tuple[PeerSpec, ...] | None) -> frozenset[int] | None:
        """Identities the specs resolve to; None for "any peer"."""
        ...

    def identity_ports(self, ident: int, name: str, protocol: Protocol) -> set[PortRange]:
        """Ports named `name` on the pods of `ident` (protocol ANY: any protocol)."""
        ...

    def label_identities(self) -> frozenset[int]: ...

    def rule_id(self, ref: RuleRef) -> int: ...


def np_ports(ports: tuple[PolicyPort, ...]) -> tuple[list[PortRange], list[tuple[str, Protocol]]]:
    numeric: list[PortRange] = []
    named: list[tuple[str, Protocol]] = []
    for port in ports:
        if port.name is not None:
            named.append((port.name, port.protocol))
        elif port.port is None:
            numeric.append(PortRange(port.protocol, PORT_MIN, PORT_MAX))
        else:
            numeric.append(PortRange(port.protocol, port.port, port.end_port or port.port))
    return numeric, named


def admin_ports(ports: tuple[AdminPort, ...]) -> tuple[list[PortRange], list[tuple[str, Protocol]]]:
    numeric: list[PortRange] = []
    named: list[tuple[str, Protocol]] = []
    for port in ports:
        if port.name is not None:
            named.append((port.name, Protocol.ANY))
        elif port.start is not None and port.end is not None:
            numeric.append(PortRange(port.protocol, port.start, port.end))
    return numeric, named


def rule_atoms(
    source: PeerSource,
    *,
    pod: Pod,
    direction: Direction,
    peers: frozenset[int] | None,
    numeric: list[PortRange],
    named: list[tuple[str, Protocol]],
) -> tuple[Atom, ...]:
    """Atoms of one rule. Named ports: ingress uses the local pod's ports, egress each peer's."""
    if peers is not None and not peers:
        return ()
    if not numeric and not named:
        return (Atom(peers, None),)
    ranges = set(numeric)
    atoms: list[Atom] = []
    if direction is Direction.INGRESS:
        for name, proto in named:
            for port in pod.ports:
                if port.name == name and proto in (Protocol.ANY, port.protocol):
                    ranges.add(PortRange(port.protocol, port.port, port.port))
    elif named:
        # Per peer identity; for "any peer", every pod identity that has such a port.
        candidates = peers if peers is not None else source.label_identities()
        by_ranges: dict[frozenset[PortRange], set[int]] = defaultdict(set)
        for ident in candidates:
            found: set[PortRange] = set()
            for name, proto in named:
                found |= source.identity_ports(ident, name, proto)
            if found:
                by_ranges[frozenset(found)].add(ident)
        atoms.extend(Atom(frozenset(ids), tuple(sorted(rs))) for rs, ids in by_ranges.items())
    if ranges:
        atoms.insert(0, Atom(peers, tuple(sorted(ranges))))
    return tuple(atoms)


def direction_rules(
    source: PeerSource,
    *,
    pod: Pod,
    nps: list[NetworkPolicy],
    admins: list[AdminNetworkPolicy],
    direction: Direction,
    namespace_audit: bool,
) -> DirectionRules:
    """`nps`: the NetworkPolicies selecting the pod; `admins`: its admin policies in evaluation order."""
    layers: list[AdminLayer] = []
    for anp in admins:
        for index, admin_rule in enumerate(anp.ingress if direction is Direction.INGRESS else anp.egress):
            numeric, named = admin_ports(admin_rule.ports)
            atoms = rule_atoms(
                source,
                pod=pod,
                direction=direction,
                peers=source.peers(admin_rule_specs(admin_rule)),
                numeric=numeric,
                named=named,
            )
            ref = RuleRef(RuleKind.ADMIN_NETWORK_POLICY, "", anp.name, index, direction)
            layers.append(AdminLayer(source.rule_id(ref), admin_rule.action, anp.audit, atoms))
    isolating = [np for np in nps if _DIRECTION_TYPE[direction] in np.policy_types]
    allows: list[AllowRule] = []
    for np in isolating:
        for index, np_rule in enumerate(np.ingress if direction is Direction.INGRESS else np.egress):
            numeric, named = np_ports(np_rule.ports)
            atoms = rule_atoms(
                source,
                pod=pod,
                direction=direction,
                peers=source.peers(np_rule_specs(np, np_rule)),
                numeric=numeric,
                named=named,
            )
            ref = RuleRef(RuleKind.NETWORK_POLICY, np.namespace, np.name, index, direction)
            allows.append(AllowRule(source.rule_id(ref), atoms))
    return DirectionRules(
        admin=tuple(layers),
        allows=tuple(allows),
        isolated=bool(isolating),
        np_audit=bool(isolating) and all(np.audit or namespace_audit for np in isolating),
    )
