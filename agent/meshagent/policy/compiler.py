"""The policy compiler: desired state (namespaces, pods, policies, local endpoints) -> KernelState.

Incremental: every change (`upsert_*`, `delete_*`, `set_local_endpoint`, ...) returns the KernelDiff it
causes and recompiles only the endpoints it can affect. What an endpoint's entries depend on is tracked:
  - the pod itself (labels, ports, identity) and its namespace (labels, audit);
  - the policies that select it (recorded at its last compile);
  - for each of those, how its peers resolve to identities: selector peers are kept up to date per
    identity added or removed; ipBlock peers are recomputed when a pod IP or prefix inside them changes;
    egress named ports when a pod with named ports changes.
`tests/policy` checks that any sequence of changes ends in the state a full recompute gives.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from meshagent.model.admin_policy import AdminNetworkPolicy
from meshagent.model.cluster import LocalEndpoint, Namespace, Pod
from meshagent.model.kernel_state import (
    IDENTITY_HOST,
    RULE_ID_NONE,
    Action,
    Direction,
    EndpointEntry,
    IPCacheEntry,
    KernelState,
    PolicyEntry,
    Protocol,
)
from meshagent.model.netpol import NetworkPolicy, PolicyType
from meshagent.policy.addresses import AddressIndex, PodKey
from meshagent.policy.decide import DirectionRules, PortRange, compile_direction
from meshagent.policy.diff import KernelDiff, diff_sets, endpoint_key, ipcache_key, policy_key
from meshagent.policy.endpoint_rules import direction_rules
from meshagent.policy.identity import IdentityAllocator, IdentityLabels, LabelFilter
from meshagent.policy.peers import (
    BlockPeer,
    PeerSpec,
    SelectorPeer,
    admin_rule_specs,
    has_egress_named_ports,
    policy_prefixes,
    policy_specs,
)
from meshagent.policy.rules import RuleKind, RuleRef, RuleTable

PolicyKey = tuple[RuleKind, str, str]  # (kind, namespace or "", name)
AnyPolicy = NetworkPolicy | AdminNetworkPolicy

_DIRECTION_TYPE = {Direction.INGRESS: PolicyType.INGRESS, Direction.EGRESS: PolicyType.EGRESS}


def policy_key_of(policy: AnyPolicy) -> PolicyKey:
    if isinstance(policy, NetworkPolicy):
        return (RuleKind.NETWORK_POLICY, policy.namespace, policy.name)
    return (RuleKind.ADMIN_NETWORK_POLICY, "", policy.name)


def namespace_labels(namespace: str, known: Namespace | None) -> dict[str, str]:
    return known.label_dict() if known is not None else Namespace(namespace).label_dict()


def admin_subject_matches(policy: AdminNetworkPolicy, pod: Pod, ns_labels: dict[str, str]) -> bool:
    subject = policy.subject
    if not subject.namespace_selector.matches(ns_labels):
        return False
    return subject.pod_selector is None or subject.pod_selector.matches(pod.label_dict())


@dataclass
class _Compiled:
    endpoint: EndpointEntry
    entries: dict[tuple[Direction, int], list[PolicyEntry]]  # by (direction, peer identity)

    def all_entries(self) -> Iterable[PolicyEntry]:
        for entries in self.entries.values():
            yield from entries


class PolicyCompiler:
    """Holds the desired state and its compiled KernelState; see the module docstring."""

    def __init__(
        self, *, label_filter: LabelFilter | None = None, identities: IdentityAllocator | None = None
    ) -> None:
        self.label_filter = label_filter or LabelFilter()
        self.identities = identities or IdentityAllocator()
        self.rules = RuleTable()
        self._namespaces: dict[str, Namespace] = {}
        self._pods: dict[PodKey, Pod] = {}
        self._pods_by_ns: dict[str, set[PodKey]] = defaultdict(set)
        self._pod_identity: dict[PodKey, int] = {}
        self._id_labels: dict[int, IdentityLabels] = {}
        self._id_dicts: dict[int, tuple[dict[str, str], dict[str, str]]] = {}
        self._id_members: dict[int, set[PodKey]] = {}
        self._addresses = AddressIndex()  # pod IPs and policy prefixes, for ipBlock peers and the ipcache
        self._netpols: dict[PolicyKey, NetworkPolicy] = {}
        self._np_by_ns: dict[str, dict[PolicyKey, NetworkPolicy]] = defaultdict(dict)
        self._admins: dict[PolicyKey, AdminNetworkPolicy] = {}
        self._local: dict[PodKey, LocalEndpoint] = {}
        self._hosts: frozenset[IPv4Address] = frozenset()
        self._spec_users: dict[PeerSpec, set[PolicyKey]] = defaultdict(set)
        self._sel_cache: dict[SelectorPeer, set[int]] = {}
        self._sel_frozen: dict[SelectorPeer, frozenset[int]] = {}  # read copies, dropped on change
        self._block_cache: dict[BlockPeer, frozenset[int]] = {}
        self._egress_named: set[PolicyKey] = set()
        self._compiled: dict[PodKey, _Compiled] = {}
        self._by_endpoint_id: dict[int, PodKey] = {}
        self._ep_policies: dict[PodKey, set[PolicyKey]] = {}
        self._policy_eps: dict[PolicyKey, set[PodKey]] = defaultdict(set)
        self._ipcache: dict[IPv4Network, int] = {}
        self._dirty_eps: set[PodKey] = set()  # recompile whole
        # Recompile only these peers' entries: their membership in some rule's peers changed.
        self._dirty_peers: dict[PodKey, set[int]] = defaultdict(set)
        self._dirty_prefixes: set[IPv4Network] = set()

    # ----------------------------------------------------------------- queries

    def state(self) -> KernelState:
        return KernelState(
            endpoints=frozenset(c.endpoint for c in self._compiled.values()),
            ipcache=frozenset(IPCacheEntry(cidr, ident) for cidr, ident in self._ipcache.items()),
            policy=frozenset(e for c in self._compiled.values() for e in c.all_entries()),
        )

    def identity_of(self, key: PodKey) -> int | None:
        return self._pod_identity.get(key)

    def identity_labels(self, identity: int) -> IdentityLabels | None:
        return self._id_labels.get(identity)

    def cidr_of_identity(self, identity: int) -> IPv4Network | None:
        for cidr, ident in self._ipcache.items():
            if ident == identity and self._addresses.has_prefix(cidr):
                return cidr
        return None

    def endpoint(self, key: PodKey) -> EndpointEntry | None:
        compiled = self._compiled.get(key)
        return compiled.endpoint if compiled else None

    def pod_of_endpoint(self, endpoint_id: int) -> PodKey | None:
        """The local pod a datapath endpoint id belongs to (for events, which carry the id)."""
        return self._by_endpoint_id.get(endpoint_id)

    def policies_selecting(self, key: PodKey) -> list[PolicyKey]:
        return sorted(self._ep_policies.get(key, ()))

    @property
    def namespaces(self) -> dict[str, Namespace]:
        return dict(self._namespaces)

    @property
    def pods(self) -> dict[PodKey, Pod]:
        return dict(self._pods)

    @property
    def network_policies(self) -> list[NetworkPolicy]:
        return list(self._netpols.values())

    @property
    def admin_policies(self) -> list[AdminNetworkPolicy]:
        return list(self._admins.values())

    @property
    def local_endpoints(self) -> dict[PodKey, LocalEndpoint]:
        return dict(self._local)

    # ----------------------------------------------------------------- changes

    def upsert_namespace(self, namespace: Namespace) -> KernelDiff:
        return self._set_namespace(namespace.name, namespace)

    def delete_namespace(self, name: str) -> KernelDiff:
        # Pods of a deleted namespace go with their own deletes; until then they keep the default labels.
        return self._set_namespace(name, None)

    def _set_namespace(self, name: str, namespace: Namespace | None) -> KernelDiff:
        old = self._namespaces.get(name)
        if old == namespace:
            return KernelDiff()
        pods = [self._pods[k] for k in sorted(self._pods_by_ns.get(name, ()))]
        relabel = namespace_labels(name, old) != namespace_labels(name, namespace)
        if relabel:
            for pod in pods:
                self._remove_pod(pod)
        if namespace is None:
            del self._namespaces[name]
        else:
            self._namespaces[name] = namespace
        if relabel:
            for pod in pods:
                self._add_pod(pod)
        self._dirty_eps.update(k for k in self._local if k[0] == name)
        return self._flush()

    def upsert_pod(self, pod: Pod) -> KernelDiff:
        old = self._pods.get(pod.key)
        if old == pod:
            return KernelDiff()
        if old is not None:
            self._remove_pod(old)
        self._add_pod(pod)
        return self._flush()

    def delete_pod(self, namespace: str, name: str) -> KernelDiff:
        old = self._pods.get((namespace, name))
        if old is None:
            return KernelDiff()
        self._remove_pod(old)
        return self._flush()

    def upsert_policy(self, policy: AnyPolicy) -> KernelDiff:
        key = policy_key_of(policy)
        old = self._netpols.get(key) if isinstance(policy, NetworkPolicy) else self._admins.get(key)
        if old == policy:
            return KernelDiff()
        if isinstance(policy, AdminNetworkPolicy):
            assert old is None or isinstance(old, AdminNetworkPolicy)
            self._replace_admin_policy(key, old, policy)
            return self._flush()
        if old is not None:
            self._remove_policy(key, old)
        self._add_policy(key, policy)
        return self._flush()

    def delete_network_policy(self, namespace: str, name: str) -> KernelDiff:
        return self._delete_policy((RuleKind.NETWORK_POLICY, namespace, name))

    def delete_admin_policy(self, name: str) -> KernelDiff:
        return self._delete_policy((RuleKind.ADMIN_NETWORK_POLICY, "", name))

    def _delete_policy(self, key: PolicyKey) -> KernelDiff:
        old: AnyPolicy | None = self._netpols.get(key) or self._admins.get(key)
        if old is None:
            return KernelDiff()
        if isinstance(old, AdminNetworkPolicy):
            self._replace_admin_policy(key, old, None)
        else:
            self._remove_policy(key, old)
        return self._flush()

    def _admin_peers(self, policy: AdminNetworkPolicy) -> set[int]:
        peers: set[int] = set()
        for admin_rule in (*policy.ingress, *policy.egress):
            peers |= self._peers(admin_rule_specs(admin_rule)) or frozenset()
        return peers

    def _replace_admin_policy(
        self, key: PolicyKey, old: AdminNetworkPolicy | None, new: AdminNetworkPolicy | None
    ) -> None:
        """An admin policy changes only the entries of the peers its rules name (old or new version):
        its peers are never "any peer", so the IDENTITY_ANY entries and every other peer's stay as they are
        (and the encoding of a peer does not depend on the others'; see decide.compile_direction)."""
        peers: set[int] = set()
        endpoints = set(self._policy_eps.get(key, ()))
        if old is not None:
            peers |= self._admin_peers(old)
            self._remove_policy(key, old, affect=False)
        if new is not None:
            self._add_policy(key, new, affect=False)
            peers |= self._admin_peers(new)
            for k in self._local:
                pod = self._pods.get(k)
                if pod is not None:
                    ns_labels = namespace_labels(pod.namespace, self._namespaces.get(pod.namespace))
                    if admin_subject_matches(new, pod, ns_labels):
                        endpoints.add(k)
        for endpoint in endpoints:
            self._dirty_peers[endpoint].update(peers)

    @property
    def host_addresses(self) -> frozenset[IPv4Address]:
        return self._hosts

    def set_host_addresses(self, addresses: Iterable[IPv4Address]) -> KernelDiff:
        """The node's own addresses: IDENTITY_HOST in the ipcache. Kubernetes always allows traffic between
        a pod and its node (kubelet probes), so every isolated direction allows IDENTITY_HOST."""
        new = frozenset(addresses)
        self._dirty_prefixes.update(IPv4Network(a) for a in new ^ self._hosts)
        self._hosts = new
        return self._flush()

    def set_local_endpoint(self, namespace: str, name: str, endpoint: LocalEndpoint) -> KernelDiff:
        key = (namespace, name)
        if self._local.get(key) == endpoint:
            return KernelDiff()
        self._local[key] = endpoint
        self._dirty_eps.add(key)
        return self._flush()

    def remove_local_endpoint(self, namespace: str, name: str) -> KernelDiff:
        key = (namespace, name)
        if self._local.pop(key, None) is None:
            return KernelDiff()
        self._dirty_eps.add(key)
        return self._flush()

    def load(
        self,
        *,
        namespaces: Iterable[Namespace] = (),
        pods: Iterable[Pod] = (),
        policies: Iterable[AnyPolicy] = (),
        local: Iterable[tuple[PodKey, LocalEndpoint]] = (),
    ) -> KernelDiff:
        """Many changes at once, compiled once (the full compile)."""
        for ns in namespaces:
            self._namespaces[ns.name] = ns
        for key, endpoint in local:
            self._local[key] = endpoint
            self._dirty_eps.add(key)
        for pod in pods:
            old = self._pods.get(pod.key)
            if old is not None:
                self._remove_pod(old)
            self._add_pod(pod)
        for policy in policies:
            pkey = policy_key_of(policy)
            old_policy: AnyPolicy | None = self._netpols.get(pkey) or self._admins.get(pkey)
            if old_policy is not None:
                self._remove_policy(pkey, old_policy)
            self._add_policy(pkey, policy)
        return self._flush()

    # ----------------------------------------------------------------- pods and identities

    def _identity_labels_of(self, pod: Pod) -> IdentityLabels:
        ns_labels = namespace_labels(pod.namespace, self._namespaces.get(pod.namespace))
        return IdentityLabels(
            namespace=pod.namespace,
            namespace_labels=self.label_filter.apply(ns_labels.items()),
            pod_labels=self.label_filter.apply(pod.labels),
        )

    def _add_pod(self, pod: Pod) -> None:
        key = pod.key
        self._pods[key] = pod
        self._pods_by_ns[pod.namespace].add(key)
        if key in self._local:
            self._dirty_eps.add(key)
        if pod.ip is None or pod.host_network:
            return
        labels = self._identity_labels_of(pod)
        ident = self.identities.labels_identity(labels)
        self._pod_identity[key] = ident
        self._addresses.add_pod(pod.ip, key)
        self._dirty_prefixes.add(IPv4Network(pod.ip))
        members = self._id_members.get(ident)
        if members is None:
            self._id_members[ident] = {key}
            self._id_labels[ident] = labels
            self._id_dicts[ident] = (labels.namespace_dict(), labels.pod_dict())
            self._identity_added(ident)
        else:
            members.add(key)
        self._membership_changed(ident, pod)

    def _remove_pod(self, pod: Pod) -> None:
        key = pod.key
        del self._pods[key]
        self._pods_by_ns[pod.namespace].discard(key)
        if key in self._local:
            self._dirty_eps.add(key)
        ident = self._pod_identity.pop(key, None)
        if ident is None or pod.ip is None:
            return
        self._addresses.remove_pod(pod.ip, key)
        self._dirty_prefixes.add(IPv4Network(pod.ip))
        members = self._id_members[ident]
        members.discard(key)
        self._membership_changed(ident, pod)
        if not members:
            del self._id_members[ident]
            self.identities.release_labels(self._id_labels.pop(ident))
            del self._id_dicts[ident]
            self._identity_removed(ident)

    def _identity_added(self, ident: int) -> None:
        ns_labels, pod_labels = self._id_dicts[ident]
        namespace = self._id_labels[ident].namespace
        for spec, ids in self._sel_cache.items():
            if spec.matches(namespace, ns_labels, pod_labels):
                ids.add(ident)
                self._sel_frozen.pop(spec, None)
                self._affect_spec(spec, {ident})

    def _identity_removed(self, ident: int) -> None:
        for spec, ids in self._sel_cache.items():
            if ident in ids:
                ids.discard(ident)
                self._sel_frozen.pop(spec, None)
                self._affect_spec(spec, {ident})

    def _membership_changed(self, ident: int, pod: Pod) -> None:
        """A pod joined or left `ident`: ipBlock peers around its members' IPs, egress named ports."""
        ips = {self._pods[k].ip for k in self._id_members.get(ident, ())} | {pod.ip}
        for spec in list(self._block_cache):
            if any(ip is not None and ip in spec.block.cidr for ip in ips):
                self._refresh_block(spec)
        if pod.ports:
            for key in self._egress_named:
                self._affect_policy(key, {ident})

    def _refresh_block(self, spec: BlockPeer) -> None:
        """Re-resolve an ipBlock peer now; only the identities that moved in or out need new entries."""
        old = self._block_cache[spec]
        new = self._resolve_block(spec)
        self._block_cache[spec] = new
        if old != new:
            self._affect_spec(spec, old ^ new)

    def _affect_spec(self, spec: PeerSpec, identities: set[int] | frozenset[int]) -> None:
        for key in self._spec_users.get(spec, ()):
            self._affect_policy(key, identities)

    def _affect_policy(self, key: PolicyKey, identities: set[int] | frozenset[int] | None = None) -> None:
        """Endpoints selected by the policy: recompiled whole (None) or for these peer identities only."""
        endpoints = self._policy_eps.get(key, ())
        if identities is None:
            self._dirty_eps.update(endpoints)
            return
        for endpoint in endpoints:
            self._dirty_peers[endpoint].update(identities)

    # ----------------------------------------------------------------- policies

    def _add_policy(self, key: PolicyKey, policy: AnyPolicy, *, affect: bool = True) -> None:
        if isinstance(policy, NetworkPolicy):
            self._netpols[key] = policy
            self._np_by_ns[policy.namespace][key] = policy
            self._dirty_eps.update(
                k
                for k in self._local
                if k[0] == policy.namespace
                and k in self._pods
                and policy.pod_selector.matches(self._pods[k].label_dict())
            )
        else:
            self._admins[key] = policy
            for k in self._local if affect else ():
                pod = self._pods.get(k)
                if pod is not None:
                    ns_labels = namespace_labels(pod.namespace, self._namespaces.get(pod.namespace))
                    if admin_subject_matches(policy, pod, ns_labels):
                        self._dirty_eps.add(k)
        for prefix in policy_prefixes(policy):
            if self._addresses.add_prefix(prefix):
                self.identities.cidr_identity(prefix)
                self._prefix_changed(prefix)
        for spec in policy_specs(policy):
            users = self._spec_users[spec]
            if not users and isinstance(spec, SelectorPeer):
                self._sel_cache[spec] = {
                    ident
                    for ident, (ns_labels, pod_labels) in self._id_dicts.items()
                    if spec.matches(self._id_labels[ident].namespace, ns_labels, pod_labels)
                }
            users.add(key)
        if has_egress_named_ports(policy):
            self._egress_named.add(key)

    def _remove_policy(self, key: PolicyKey, policy: AnyPolicy, *, affect: bool = True) -> None:
        if affect:
            self._affect_policy(key)
        if isinstance(policy, NetworkPolicy):
            del self._netpols[key]
            del self._np_by_ns[policy.namespace][key]
        else:
            del self._admins[key]
        for spec in policy_specs(policy):
            users = self._spec_users[spec]
            users.discard(key)
            if not users:
                del self._spec_users[spec]
                if isinstance(spec, SelectorPeer):
                    self._sel_cache.pop(spec, None)
                    self._sel_frozen.pop(spec, None)
                else:
                    self._block_cache.pop(spec, None)
        for prefix in policy_prefixes(policy):
            if self._addresses.remove_prefix(prefix):
                self.identities.release_cidr(prefix)
                self._prefix_changed(prefix)
        self._egress_named.discard(key)
        self.rules.release_policy(key[0], key[1], key[2])

    def _prefix_changed(self, prefix: IPv4Network) -> None:
        self._dirty_prefixes.add(prefix)
        for spec in list(self._block_cache):
            if spec.block.cidr.overlaps(prefix):
                self._refresh_block(spec)

    # ----------------------------------------------------------------- resolution

    def _resolve(self, spec: PeerSpec) -> frozenset[int]:
        if isinstance(spec, SelectorPeer):
            frozen = self._sel_frozen.get(spec)
            if frozen is None:
                frozen = self._sel_frozen[spec] = frozenset(self._sel_cache[spec])
            return frozen
        cached = self._block_cache.get(spec)
        if cached is None:
            cached = self._resolve_block(spec)
            self._block_cache[spec] = cached
        return cached

    def _resolve_block(self, spec: BlockPeer) -> frozenset[int]:
        block = spec.block
        ids: set[int] = set()
        for prefix in self._addresses.prefixes_within(block.cidr):
            shadowed = prefix.prefixlen == 32 and (
                self._addresses.holds_pod(prefix.network_address) or prefix.network_address in self._hosts
            )
            if not shadowed and block.contains(prefix):
                ids.add(self.identities.cidr_identity(prefix))
        # Pod IPs are /32s in the ipcache, so a packet from a pod carries the pod's identity: allow that
        # identity when every pod holding it is inside the block (never more than the block allows).
        candidates = {
            self._pod_identity[k]
            for ip in self._addresses.pod_ips_within(block.cidr)
            for k in self._addresses.pods_at(ip)
        }
        for ident in candidates:
            ips = [self._pods[k].ip for k in self._id_members.get(ident, ())]
            if ips and all(ip is not None and block.contains_address(ip) for ip in ips):
                ids.add(ident)
        return frozenset(ids)

    def _peers(self, specs: tuple[PeerSpec, ...] | None) -> frozenset[int] | None:
        if specs is None:
            return None
        result: set[int] = set()
        for spec in specs:
            result |= self._resolve(spec)
        return frozenset(result)

    def _identity_ports(self, ident: int, name: str, protocol: Protocol) -> set[PortRange]:
        """Ports named `name` on the pods of `ident` (protocol ANY: whatever protocol the port has)."""
        ranges = set()
        for key in self._id_members.get(ident, ()):
            for port in self._pods[key].ports:
                if port.name == name and protocol in (Protocol.ANY, port.protocol):
                    ranges.add(PortRange(port.protocol, port.port, port.port))
        return ranges

    # PeerSource (endpoint_rules): what the rules of an endpoint need from the cluster state.

    def peers(self, specs: tuple[PeerSpec, ...] | None) -> frozenset[int] | None:
        return self._peers(specs)

    def identity_ports(self, ident: int, name: str, protocol: Protocol) -> set[PortRange]:
        return self._identity_ports(ident, name, protocol)

    def label_identities(self) -> frozenset[int]:
        return frozenset(self._id_members)

    def rule_id(self, ref: RuleRef) -> int:
        return self.rules.id_for(ref)

    def _direction_rules(
        self, pod: Pod, nps: list[NetworkPolicy], admins: list[AdminNetworkPolicy], direction: Direction
    ) -> DirectionRules:
        ns = self._namespaces.get(pod.namespace)
        return direction_rules(
            self,
            pod=pod,
            nps=nps,
            admins=admins,
            direction=direction,
            namespace_audit=ns is not None and ns.audit,
        )

    def selecting_policies(self, pod: Pod) -> tuple[list[NetworkPolicy], list[AdminNetworkPolicy]]:
        """NetworkPolicies (by name) and admin policies (by priority, then name) selecting `pod`."""
        labels = pod.label_dict()
        nps = sorted(
            (np for np in self._np_by_ns.get(pod.namespace, {}).values() if np.pod_selector.matches(labels)),
            key=lambda np: np.name,
        )
        ns_labels = namespace_labels(pod.namespace, self._namespaces.get(pod.namespace))
        admins = sorted(
            (a for a in self._admins.values() if admin_subject_matches(a, pod, ns_labels)),
            key=lambda a: (a.priority, a.name),
        )
        return nps, admins

    def _compile_endpoint(self, key: PodKey) -> tuple[_Compiled | None, set[PolicyKey]]:
        pod = self._pods.get(key)
        local = self._local.get(key)
        ident = self._pod_identity.get(key)
        if pod is None or local is None or ident is None or pod.ip is None:
            return None, set()
        nps, admins = self.selecting_policies(pod)
        used = {policy_key_of(np) for np in nps} | {policy_key_of(anp) for anp in admins}
        entries: dict[tuple[Direction, int], list[PolicyEntry]] = {}
        flags: dict[Direction, DirectionRules] = {}
        for direction in (Direction.INGRESS, Direction.EGRESS):
            rules = self._direction_rules(pod, nps, admins, direction)
            flags[direction] = rules
            by_peer = compile_direction(rules, endpoint_id=local.endpoint_id, direction=direction)
            entries.update(((direction, peer), peer_entries) for peer, peer_entries in by_peer.items())
            if rules.isolated:
                entries[(direction, IDENTITY_HOST)] = [
                    PolicyEntry(
                        local.endpoint_id,
                        direction,
                        IDENTITY_HOST,
                        Protocol.ANY,
                        0,
                        0,
                        Action.ALLOW,
                        RULE_ID_NONE,
                    )
                ]
        endpoint = EndpointEntry(
            ifindex=local.ifindex,
            endpoint_id=local.endpoint_id,
            identity=ident,
            ipv4=pod.ip,
            enforce_ingress=flags[Direction.INGRESS].enforce,
            enforce_egress=flags[Direction.EGRESS].enforce,
            audit_ingress=flags[Direction.INGRESS].audit,
            audit_egress=flags[Direction.EGRESS].audit,
        )
        return _Compiled(endpoint, entries), used

    def _recompile_peers(
        self, key: PodKey, peers: set[int], old_entries: list[PolicyEntry], new_entries: list[PolicyEntry]
    ) -> bool:
        """Recompile only `peers`' entries of a compiled endpoint; False when it needs a whole recompile."""
        compiled = self._compiled.get(key)
        pod = self._pods.get(key)
        local = self._local.get(key)
        if compiled is None or pod is None or local is None:
            return False
        nps, admins = self.selecting_policies(pod)
        np_keys = {policy_key_of(np) for np in nps}
        recorded = self._ep_policies.get(key, set())
        if np_keys != {k for k in recorded if k[0] is RuleKind.NETWORK_POLICY}:
            return False  # isolation or the "any peer" rules may differ: whole recompile
        used = np_keys | {policy_key_of(anp) for anp in admins}
        if used != recorded:
            for pk in recorded - used:
                self._policy_eps[pk].discard(key)
            for pk in used - recorded:
                self._policy_eps[pk].add(key)
            self._ep_policies[key] = used
        for direction in (Direction.INGRESS, Direction.EGRESS):
            rules = self._direction_rules(pod, nps, admins, direction)
            by_peer = compile_direction(
                rules, endpoint_id=local.endpoint_id, direction=direction, only_peers=peers
            )
            for peer in peers:
                old_entries.extend(compiled.entries.pop((direction, peer), ()))
                fresh = by_peer.get(peer)
                if fresh:
                    compiled.entries[(direction, peer)] = fresh
                    new_entries.extend(fresh)
        return True

    def _ipcache_value(self, prefix: IPv4Network) -> int | None:
        if prefix.prefixlen == 32 and prefix.network_address in self._hosts:
            return IDENTITY_HOST
        if prefix.prefixlen == 32:
            holders = self._addresses.pods_at(prefix.network_address)
            if holders:
                return self._pod_identity[min(holders)]
        if self._addresses.has_prefix(prefix):
            return self.identities.cidr_identity(prefix)
        return None

    def _flush(self) -> KernelDiff:
        old_eps: list[EndpointEntry] = []
        new_eps: list[EndpointEntry] = []
        old_entries: list[PolicyEntry] = []
        new_entries: list[PolicyEntry] = []
        for key, peers in sorted(self._dirty_peers.items()):
            if key not in self._dirty_eps and not self._recompile_peers(key, peers, old_entries, new_entries):
                self._dirty_eps.add(key)
        self._dirty_peers.clear()
        for key in sorted(self._dirty_eps):
            before = self._compiled.pop(key, None)
            if before is not None:
                if self._by_endpoint_id.get(before.endpoint.endpoint_id) == key:
                    del self._by_endpoint_id[before.endpoint.endpoint_id]
                old_eps.append(before.endpoint)
                old_entries.extend(before.all_entries())
            for pk in self._ep_policies.pop(key, ()):
                self._policy_eps[pk].discard(key)
            compiled, used = self._compile_endpoint(key)
            if compiled is None:
                continue
            self._compiled[key] = compiled
            self._by_endpoint_id[compiled.endpoint.endpoint_id] = key
            new_eps.append(compiled.endpoint)
            new_entries.extend(compiled.all_entries())
            self._ep_policies[key] = used
            for pk in used:
                self._policy_eps[pk].add(key)
        old_ipc: list[IPCacheEntry] = []
        new_ipc: list[IPCacheEntry] = []
        for prefix in self._dirty_prefixes:
            before_ident = self._ipcache.pop(prefix, None)
            if before_ident is not None:
                old_ipc.append(IPCacheEntry(prefix, before_ident))
            value = self._ipcache_value(prefix)
            if value is not None:
                self._ipcache[prefix] = value
                new_ipc.append(IPCacheEntry(prefix, value))
        self._dirty_eps.clear()
        self._dirty_prefixes.clear()
        ue, de = diff_sets(old_eps, new_eps, endpoint_key)
        ui, di = diff_sets(old_ipc, new_ipc, ipcache_key)
        up, dp = diff_sets(old_entries, new_entries, policy_key)
        return KernelDiff(ue, de, ui, di, up, dp)
