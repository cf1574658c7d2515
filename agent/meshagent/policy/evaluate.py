"""The policy semantics evaluated directly on pods, addresses and policies, with the reasons.

Written apart from the compiler on purpose: it knows nothing of identities-as-numbers, entries or lookups,
so the property tests can hold the compiled state against it, and `policy trace` can say why.

Semantics, per endpoint (pod) and direction:
0. Traffic between the pod and its node (the node's addresses) is always allowed (Kubernetes).
1. Admin policies whose subject selects the pod, by priority (lower first) then name, rules in order: the
   first rule whose peers and ports match decides: Allow, Deny, or Pass (go to step 2). Rules of a policy
   in audit mode never decide: a matching audited Deny only turns a later "allowed" into "audited".
2. NetworkPolicies of the pod's namespace selecting it with this direction in policyTypes: none -> allowed;
   otherwise allowed when any of their rules matches, else denied by default (audited when all of those
   policies, or the namespace, are in audit mode).
Peers: selectors match the peer pod's identity labels (pod labels and its namespace's labels, after the
label filter); an ipBlock matches an address inside the cidr and outside the excepts, and a pod only when
every pod sharing its identity is (identities, not addresses, are what the datapath sees for pods).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshagent.model.admin_policy import AdminAction, AdminNetworkPolicy, AdminPort, AdminRule, AdminSelector
from meshagent.model.cluster import Namespace, Pod
from meshagent.model.ip import IPAddress
from meshagent.model.kernel_state import Direction, Protocol, Verdict
from meshagent.model.netpol import IPBlock, NetworkPolicy, PolicyPeer, PolicyPort, PolicyRule, PolicyType
from meshagent.policy.identity import IdentityLabels, LabelFilter
from meshagent.policy.rules import RuleKind, RuleRef

PodKey = tuple[str, str]


@dataclass(frozen=True)
class Peer:
    """The other end: a pod (with its IP) or a bare address."""

    ip: IPAddress
    pod: Pod | None = None

    def describe(self) -> str:
        return f"{self.pod.namespace}/{self.pod.name} ({self.ip})" if self.pod else str(self.ip)


@dataclass(frozen=True)
class RuleCheck:
    ref: RuleRef
    action: str  # Allow / Deny / Pass for admin rules, Allow for NetworkPolicy rules
    matched: bool
    why: str
    audit: bool = False

    def as_dict(self) -> dict[str, object]:
        """The check as JSON output shows it (`policy trace -o json`, the service map's panel)."""
        return {
            "rule": self.ref.describe(),
            "action": self.action,
            "matched": self.matched,
            "why": self.why,
            "audit": self.audit,
        }


@dataclass(frozen=True)
class DirectionDecision:
    direction: Direction
    endpoint: Pod
    verdict: Verdict
    deciding: RuleRef | None
    reason: str
    checks: tuple[RuleCheck, ...] = ()
    isolating: tuple[str, ...] = ()  # NetworkPolicies isolating the endpoint in this direction


@dataclass
class World:
    """The desired state as the evaluator reads it."""

    namespaces: Mapping[str, Namespace]
    pods: Mapping[PodKey, Pod]
    network_policies: Sequence[NetworkPolicy]
    admin_policies: Sequence[AdminNetworkPolicy]
    label_filter: LabelFilter = field(default_factory=LabelFilter)
    host_addresses: frozenset[IPAddress] = frozenset()  # the node's own addresses

    def __post_init__(self) -> None:
        self._groups: dict[IdentityLabels, list[Pod]] = {}
        for pod in self.pods.values():
            if (pod.ip is not None or pod.ipv6 is not None) and not pod.host_network:
                self._groups.setdefault(self.identity_labels(pod), []).append(pod)

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        return self.namespaces.get(namespace, Namespace(namespace)).label_dict()

    def identity_labels(self, pod: Pod) -> IdentityLabels:
        return IdentityLabels(
            namespace=pod.namespace,
            namespace_labels=self.label_filter.apply(self.namespace_labels(pod.namespace).items()),
            pod_labels=self.label_filter.apply(pod.labels),
        )

    def same_identity(self, pod: Pod) -> list[Pod]:
        return self._groups.get(self.identity_labels(pod), [pod])

    def pod_by_ip(self, ip: IPAddress) -> Pod | None:
        holders = sorted(
            (p for p in self.pods.values() if ip in (p.ip, p.ipv6) and not p.host_network),
            key=lambda p: p.key,
        )
        return holders[0] if holders else None


def _blocks_match(world: World, blocks: Sequence[IPBlock], peer: Peer) -> bool:
    """Whether a rule's ipBlocks (together) take `peer`. An address: when some block holds it. A pod: it
    is known by its identity (marked for its IPv6 addresses), so a block of the packet's family must hold
    that family's addresses of every pod of its identity (a block holding only some of them takes none:
    the identity cannot tell them apart)."""
    if not blocks:
        return False
    if peer.pod is None:
        return any(block.contains_address(peer.ip) for block in blocks)
    family = peer.ip.version
    addresses = [
        ip
        for p in world.same_identity(peer.pod)
        for ip in (p.ip, p.ipv6)
        if ip is not None and ip.version == family
    ]
    return bool(addresses) and any(
        block.cidr.version == family and all(block.contains_address(ip) for ip in addresses)
        for block in blocks
    )


def _np_peer_matches(world: World, policy: NetworkPolicy, peer_spec: PolicyPeer, peer: Peer) -> bool:
    """A selector peer (ipBlocks are matched by the whole rule: _blocks_match)."""
    if peer_spec.ip_block is not None or peer.pod is None:
        return False
    labels = world.identity_labels(peer.pod)
    if peer_spec.namespace_selector is None:
        if peer.pod.namespace != policy.namespace:
            return False
    elif not peer_spec.namespace_selector.matches(dict(labels.namespace_labels)):
        return False
    return peer_spec.pod_selector is None or peer_spec.pod_selector.matches(dict(labels.pod_labels))


def _admin_peer_matches(world: World, selector: AdminSelector, peer: Peer) -> bool:
    """A selector of pods (networks are matched by the whole rule: _blocks_match)."""
    if selector.networks or peer.pod is None:
        return False
    labels = world.identity_labels(peer.pod)
    if not selector.namespace_selector.matches(dict(labels.namespace_labels)):
        return False
    return selector.pod_selector is None or selector.pod_selector.matches(dict(labels.pod_labels))


def _port_owner(endpoint: Pod, peer: Peer, direction: Direction) -> Pod | None:
    """Whose container ports a named port refers to: the destination's."""
    return endpoint if direction is Direction.INGRESS else peer.pod


def _np_port_matches(rule_port: PolicyPort, owner: Pod | None, protocol: Protocol, port: int) -> bool:
    if rule_port.protocol != protocol:
        return False
    if rule_port.name is not None:
        return owner is not None and owner.named_port(rule_port.name, protocol) == port
    if rule_port.port is None:
        return True
    return rule_port.port <= port <= (rule_port.end_port or rule_port.port)


def _admin_port_matches(rule_port: AdminPort, owner: Pod | None, protocol: Protocol, port: int) -> bool:
    if rule_port.name is not None:
        return owner is not None and any(
            p.name == rule_port.name and p.protocol == protocol and p.port == port for p in owner.ports
        )
    if rule_port.protocol != protocol or rule_port.start is None or rule_port.end is None:
        return False
    return rule_port.start <= port <= rule_port.end


def _describe_ports(ports: Sequence[PolicyPort] | Sequence[AdminPort]) -> str:
    return ", ".join(p.describe() for p in ports)


def _check_np_rule(
    world: World,
    policy: NetworkPolicy,
    rule: PolicyRule,
    *,
    endpoint: Pod,
    direction: Direction,
    peer: Peer,
    protocol: Protocol,
    port: int,
) -> tuple[bool, str]:
    if rule.peers is not None and not (
        any(_np_peer_matches(world, policy, p, peer) for p in rule.peers)
        or _blocks_match(world, [p.ip_block for p in rule.peers if p.ip_block is not None], peer)
    ):
        wanted = "; ".join(p.describe() for p in rule.peers) or "no peer"
        return False, f"peer {peer.describe()} is not {wanted}"
    if rule.ports:
        owner = _port_owner(endpoint, peer, direction)
        if not any(_np_port_matches(p, owner, protocol, port) for p in rule.ports):
            return False, f"{protocol.name.lower()}/{port} is not {_describe_ports(rule.ports)}"
    return True, "peer and port match"


def _check_admin_rule(
    world: World,
    rule: AdminRule,
    *,
    endpoint: Pod,
    direction: Direction,
    peer: Peer,
    protocol: Protocol,
    port: int,
) -> tuple[bool, str]:
    if not (
        any(_admin_peer_matches(world, s, peer) for s in rule.peers)
        or _blocks_match(world, [IPBlock(net) for s in rule.peers for net in s.networks], peer)
    ):
        return False, f"peer {peer.describe()} is not " + "; ".join(s.describe() for s in rule.peers)
    if rule.ports:
        owner = _port_owner(endpoint, peer, direction)
        if not any(_admin_port_matches(p, owner, protocol, port) for p in rule.ports):
            return False, f"{protocol.name.lower()}/{port} is not {_describe_ports(rule.ports)}"
    return True, "peer and port match"


def admin_policies_for(world: World, endpoint: Pod) -> list[AdminNetworkPolicy]:
    ns_labels = world.namespace_labels(endpoint.namespace)
    labels = endpoint.label_dict()
    selected = [
        a
        for a in world.admin_policies
        if a.subject.namespace_selector.matches(ns_labels)
        and (a.subject.pod_selector is None or a.subject.pod_selector.matches(labels))
    ]
    return sorted(selected, key=lambda a: (a.priority, a.name))


def network_policies_for(world: World, endpoint: Pod) -> list[NetworkPolicy]:
    labels = endpoint.label_dict()
    return sorted(
        (
            np
            for np in world.network_policies
            if np.namespace == endpoint.namespace and np.pod_selector.matches(labels)
        ),
        key=lambda np: np.name,
    )


def evaluate_direction(
    world: World, *, endpoint: Pod, direction: Direction, peer: Peer, protocol: Protocol, port: int
) -> DirectionDecision:
    if peer.pod is None and peer.ip in world.host_addresses:
        return DirectionDecision(
            direction, endpoint, Verdict.ALLOWED, None, "traffic between a pod and its node is always allowed"
        )
    checks: list[RuleCheck] = []
    pending_audit: RuleRef | None = None
    for anp in admin_policies_for(world, endpoint):
        rules = anp.ingress if direction is Direction.INGRESS else anp.egress
        for index, rule in enumerate(rules):
            ref = RuleRef(RuleKind.ADMIN_NETWORK_POLICY, "", anp.name, index, direction)
            matched, why = _check_admin_rule(
                world, rule, endpoint=endpoint, direction=direction, peer=peer, protocol=protocol, port=port
            )
            checks.append(RuleCheck(ref, rule.action.value, matched, why, audit=anp.audit))
            if not matched:
                continue
            if anp.audit:
                if rule.action is AdminAction.DENY and pending_audit is None:
                    pending_audit = ref
                continue
            if rule.action is AdminAction.DENY:
                return DirectionDecision(
                    direction, endpoint, Verdict.DENIED, ref, "denied by an admin rule", tuple(checks)
                )
            if rule.action is AdminAction.ALLOW:
                return _audited(
                    DirectionDecision(
                        direction, endpoint, Verdict.ALLOWED, ref, "allowed by an admin rule", tuple(checks)
                    ),
                    pending_audit,
                )
            break  # Pass: NetworkPolicy decides
        else:
            continue
        break
    direction_type = PolicyType.INGRESS if direction is Direction.INGRESS else PolicyType.EGRESS
    isolating = [np for np in network_policies_for(world, endpoint) if direction_type in np.policy_types]
    names = tuple(f"{np.namespace}/{np.name}" for np in isolating)
    if not isolating:
        decision = DirectionDecision(
            direction,
            endpoint,
            Verdict.ALLOWED,
            None,
            "no NetworkPolicy isolates this direction",
            tuple(checks),
        )
        return _audited(decision, pending_audit)
    deciding: RuleRef | None = None
    for np in isolating:
        for index, np_rule in enumerate(np.ingress if direction is Direction.INGRESS else np.egress):
            ref = RuleRef(RuleKind.NETWORK_POLICY, np.namespace, np.name, index, direction)
            matched, why = _check_np_rule(
                world,
                np,
                np_rule,
                endpoint=endpoint,
                direction=direction,
                peer=peer,
                protocol=protocol,
                port=port,
            )
            checks.append(RuleCheck(ref, "Allow", matched, why))
            if matched and deciding is None:
                deciding = ref
    if deciding is not None:
        decision = DirectionDecision(
            direction,
            endpoint,
            Verdict.ALLOWED,
            deciding,
            "allowed by a NetworkPolicy rule",
            tuple(checks),
            names,
        )
        return _audited(decision, pending_audit)
    ns_audit = endpoint.namespace in world.namespaces and world.namespaces[endpoint.namespace].audit
    if all(np.audit or ns_audit for np in isolating):
        return DirectionDecision(
            direction,
            endpoint,
            Verdict.AUDITED,
            None,
            "default deny (audit mode: passed)",
            tuple(checks),
            names,
        )
    return DirectionDecision(
        direction,
        endpoint,
        Verdict.DENIED,
        None,
        "default deny: isolated and no rule allows",
        tuple(checks),
        names,
    )


def _audited(decision: DirectionDecision, pending: RuleRef | None) -> DirectionDecision:
    if pending is None or decision.verdict is not Verdict.ALLOWED:
        return decision
    return DirectionDecision(
        decision.direction,
        decision.endpoint,
        Verdict.AUDITED,
        pending,
        "would be denied by an admin rule in audit mode",
        decision.checks,
        decision.isolating,
    )


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """A connection passes both the source's egress and the destination's ingress."""
    if Verdict.DENIED in verdicts:
        return Verdict.DENIED
    if Verdict.AUDITED in verdicts:
        return Verdict.AUDITED
    return Verdict.ALLOWED
