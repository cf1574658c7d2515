"""The policy compiler: desired state (namespaces, pods, policies, local endpoints) -> KernelState.

Incremental: every change (`upsert_*`, `delete_*`, `set_local_endpoint`, ...) returns the KernelDiff it
causes and recompiles only the endpoints it can affect. What an endpoint's entries depend on is tracked:
  - the pod itself (labels, ports, identity) and its namespace (labels, audit);
  - the policies that select it (recorded at its last compile);
  - for each of those, how its peers resolve to identities (`peer_resolver`), and egress named ports
    when a pod with named ports changes.
The cluster itself (pods, namespaces, identities, addresses) is kept by `cluster_store`; this module
tracks what is dirty, compiles endpoints and turns the result into a KernelDiff.
`tests/policy` checks that any sequence of changes ends in the state a full recompute gives.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from meshagent.model.admin_policy import AdminNetworkPolicy
from meshagent.model.cluster import LocalEndpoint, Namespace, Pod
from meshagent.model.ip import IPAddress, IPNetwork, host_network
from meshagent.model.kernel_state import (
    IDENTITY_FIRST_CIDR,
    IDENTITY_FIRST_LABELS,
    IDENTITY_HOST,
    RULE_ID_NONE,
    Action,
    Direction,
    EndpointEntry,
    IPCacheEntry,
    KernelState,
    PolicyEntry,
    Protocol,
    family6_identity,
    user_identity,
)
from meshagent.model.netpol import NetworkPolicy, PolicyType
from meshagent.policy.addresses import PodKey
from meshagent.policy.cluster_store import ClusterStore, MembershipChange, namespace_labels, pod_addresses
from meshagent.policy.decide import DirectionRules, PortRange, compile_direction
from meshagent.policy.diff import KernelDiff, diff_sets, endpoint_key, ipcache_key, policy_key
from meshagent.policy.endpoint_rules import direction_rules
from meshagent.policy.identity import IdentityAllocator, IdentityLabels, LabelFilter
from meshagent.policy.peer_resolver import Moved, PeerResolver, PolicyKey
from meshagent.policy.peers import (
    PeerSpec,
    admin_rule_specs,
    has_egress_named_ports,
    policy_prefixes,
    policy_specs,
)
from meshagent.policy.rules import RuleKind, RuleRef, RuleTable

AnyPolicy = NetworkPolicy | AdminNetworkPolicy

_DIRECTION_TYPE = {Direction.INGRESS: PolicyType.INGRESS, Direction.EGRESS: PolicyType.EGRESS}


def policy_key_of(policy: AnyPolicy) -> PolicyKey:
    if isinstance(policy, NetworkPolicy):
        return (RuleKind.NETWORK_POLICY, policy.namespace, policy.name)
    return (RuleKind.ADMIN_NETWORK_POLICY, "", policy.name)


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
        self._store = ClusterStore(self.label_filter, self.identities)
        self._resolver = PeerResolver(self._store)
        self._netpols: dict[PolicyKey, NetworkPolicy] = {}
        self._np_by_ns: dict[str, dict[PolicyKey, NetworkPolicy]] = defaultdict(dict)
        self._admins: dict[PolicyKey, AdminNetworkPolicy] = {}
        self._local: dict[PodKey, LocalEndpoint] = {}
        self._egress_named: set[PolicyKey] = set()
        self._compiled: dict[PodKey, _Compiled] = {}
        self._by_endpoint_id: dict[int, PodKey] = {}
        self._ep_policies: dict[PodKey, set[PolicyKey]] = {}
        self._policy_eps: dict[PolicyKey, set[PodKey]] = defaultdict(set)
        self._ipcache: dict[IPNetwork, int] = {}
        self._dirty_eps: set[PodKey] = set()  # recompile whole
        # Recompile only these peers' entries: their membership in some rule's peers changed.
        self._dirty_peers: dict[PodKey, set[int]] = defaultdict(set)
        self._dirty_prefixes: set[IPNetwork] = set()

    # ----------------------------------------------------------------- queries

    def state(self) -> KernelState:
        return KernelState(
            endpoints=frozenset(c.endpoint for c in self._compiled.values()),
            ipcache=frozenset(IPCacheEntry(cidr, ident) for cidr, ident in self._ipcache.items()),
            policy=frozenset(e for c in self._compiled.values() for e in c.all_entries()),
        )

    def identity_of(self, key: PodKey) -> int | None:
        return self._store.pod_identity.get(key)

    def identity_labels(self, identity: int) -> IdentityLabels | None:
        return self._store.id_labels.get(identity)

    def cidr_of_identity(self, identity: int) -> IPNetwork | None:
        for cidr, ident in self._ipcache.items():
            if ident == identity and self._store.addresses.has_prefix(cidr):
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
        return dict(self._store.namespaces)

    @property
    def pods(self) -> dict[PodKey, Pod]:
        return dict(self._store.pods)

    def pod(self, key: PodKey) -> Pod | None:
        """One pod, without copying them all (`pods`)."""
        return self._store.pods.get(key)

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
        old = self._store.namespaces.get(name)
        if old == namespace:
            return KernelDiff()
        pods = self._store.pods_in(name)
        relabel = namespace_labels(name, old) != namespace_labels(name, namespace)
        if relabel:
            for pod in pods:
                self._remove_pod(pod)
        self._store.set_namespace(name, namespace)
        if relabel:
            for pod in pods:
                self._add_pod(pod)
        self._dirty_eps.update(k for k in self._local if k[0] == name)
        return self._flush()

    def upsert_pod(self, pod: Pod) -> KernelDiff:
        old = self._store.pods.get(pod.key)
        if old == pod:
            return KernelDiff()
        if old is not None:
            self._remove_pod(old)
        self._add_pod(pod)
        return self._flush()

    def delete_pod(self, namespace: str, name: str) -> KernelDiff:
        old = self._store.pods.get((namespace, name))
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
            peers |= self._resolver.peers(admin_rule_specs(admin_rule)) or frozenset()
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
                pod = self._store.pods.get(k)
                if pod is not None and self._admin_selects(new, pod):
                    endpoints.add(k)
        for endpoint in endpoints:
            self._dirty_peers[endpoint].update(peers)

    @property
    def host_addresses(self) -> frozenset[IPAddress]:
        return self._store.hosts

    def set_host_addresses(self, addresses: Iterable[IPAddress]) -> KernelDiff:
        """The node's own addresses: IDENTITY_HOST in the ipcache. Kubernetes always allows traffic between
        a pod and its node (kubelet probes), so every isolated direction allows IDENTITY_HOST."""
        moved = self._store.set_hosts(addresses)
        self._dirty_prefixes.update(host_network(a) for a in moved)
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
            self._store.set_namespace(ns.name, ns)
        for key, endpoint in local:
            self._local[key] = endpoint
            self._dirty_eps.add(key)
        for pod in pods:
            old = self._store.pods.get(pod.key)
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

    def _add_pod(self, pod: Pod) -> None:
        if pod.key in self._local:
            self._dirty_eps.add(pod.key)
        change = self._store.add_pod(pod)
        if change is None:
            return
        self._dirty_prefixes.update(host_network(ip) for ip in pod_addresses(change.pod))
        if change.identity_appeared:
            self._affect(self._resolver.identity_appeared(change.identity))
        self._membership_changed(change)

    def _remove_pod(self, pod: Pod) -> None:
        if pod.key in self._local:
            self._dirty_eps.add(pod.key)
        change = self._store.remove_pod(pod)
        if change is None:
            return
        self._dirty_prefixes.update(host_network(ip) for ip in pod_addresses(change.pod))
        self._membership_changed(change)
        if change.identity_vanished:
            self._affect(self._resolver.identity_vanished(change.identity))

    def _membership_changed(self, change: MembershipChange) -> None:
        """A pod joined or left an identity: ipBlock peers around its members' IPs, egress named ports."""
        ips = [*self._store.member_ips(change.identity), *pod_addresses(change.pod)]
        self._affect(self._resolver.addresses_changed(ips))
        if change.family6_changed:
            self._affect(self._resolver.family6_changed(change.identity))
        if change.pod.ports or change.family6_changed:
            for key in self._egress_named:
                self._affect_policy(key, {change.identity})

    def _affect(self, moved: Moved) -> None:
        for spec, identities in moved:
            for key in self._resolver.users(spec):
                self._affect_policy(key, identities)

    def _affect_policy(self, key: PolicyKey, identities: set[int] | frozenset[int] | None = None) -> None:
        """Endpoints selected by the policy: recompiled whole (None) or for these peer identities only."""
        endpoints = self._policy_eps.get(key, ())
        if identities is None:
            self._dirty_eps.update(endpoints)
            return
        # A pod identity's entries and its IPv6 identity's are made from the same rules: one moves, both
        # are recompiled.
        both = set(identities)
        for ident in identities:
            if IDENTITY_FIRST_LABELS <= user_identity(ident) < IDENTITY_FIRST_CIDR:
                both.add(family6_identity(ident))
                both.add(user_identity(ident))
        for endpoint in endpoints:
            self._dirty_peers[endpoint].update(both)

    # ----------------------------------------------------------------- policies

    def _add_policy(self, key: PolicyKey, policy: AnyPolicy, *, affect: bool = True) -> None:
        if isinstance(policy, NetworkPolicy):
            self._netpols[key] = policy
            self._np_by_ns[policy.namespace][key] = policy
            pods = self._store.pods
            self._dirty_eps.update(
                k
                for k in self._local
                if k[0] == policy.namespace
                and k in pods
                and policy.pod_selector.matches(pods[k].label_dict())
            )
        else:
            self._admins[key] = policy
            for k in self._local if affect else ():
                pod = self._store.pods.get(k)
                if pod is not None and self._admin_selects(policy, pod):
                    self._dirty_eps.add(k)
        for prefix in policy_prefixes(policy):
            if self._store.addresses.add_prefix(prefix):
                self.identities.cidr_identity(prefix)
                self._prefix_changed(prefix)
        self._resolver.add_user(key, policy_specs(policy))
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
        self._resolver.remove_user(key, policy_specs(policy))
        for prefix in policy_prefixes(policy):
            if self._store.addresses.remove_prefix(prefix):
                self.identities.release_cidr(prefix)
                self._prefix_changed(prefix)
        self._egress_named.discard(key)
        self.rules.release_policy(key[0], key[1], key[2])

    def _prefix_changed(self, prefix: IPNetwork) -> None:
        self._dirty_prefixes.add(prefix)
        self._affect(self._resolver.prefix_changed(prefix))

    def _admin_selects(self, policy: AdminNetworkPolicy, pod: Pod) -> bool:
        return admin_subject_matches(policy, pod, self._store.labels_of_namespace(pod.namespace))

    # ----------------------------------------------------------------- compiling endpoints

    # PeerSource (endpoint_rules): what the rules of an endpoint need from the cluster state.

    def peers(self, specs: tuple[PeerSpec, ...] | None) -> frozenset[int] | None:
        return self._resolver.peers(specs)

    def identity_ports(self, ident: int, name: str, protocol: Protocol) -> set[PortRange]:
        return self._store.identity_ports(ident, name, protocol)

    def label_identities(self) -> frozenset[int]:
        """Every pod identity, and the IPv6 identity of those with IPv6 addresses."""
        store = self._store
        return frozenset(store.id_members) | frozenset(
            family6_identity(ident) for ident in store.id_members if store.has_ipv6_members(ident)
        )

    def rule_id(self, ref: RuleRef) -> int:
        return self.rules.id_for(ref)

    def _direction_rules(
        self, pod: Pod, nps: list[NetworkPolicy], admins: list[AdminNetworkPolicy], direction: Direction
    ) -> DirectionRules:
        ns = self._store.namespaces.get(pod.namespace)
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
        ns_labels = self._store.labels_of_namespace(pod.namespace)
        admins = sorted(
            (a for a in self._admins.values() if admin_subject_matches(a, pod, ns_labels)),
            key=lambda a: (a.priority, a.name),
        )
        return nps, admins

    def _compile_endpoint(self, key: PodKey) -> tuple[_Compiled | None, set[PolicyKey]]:
        pod = self._store.pods.get(key)
        local = self._local.get(key)
        if pod is None or local is None:
            return None, set()
        nps, admins = self.selecting_policies(pod)
        used = {policy_key_of(np) for np in nps} | {policy_key_of(anp) for anp in admins}
        ident = self._store.pod_identity.get(key)
        if ident is None:
            return None, set()  # no address yet, or the host's network: nothing of its own to enforce
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
            # An IPv6-only pod has no IPv4 address: every IPv4 source it uses is then spoofed.
            ipv4=pod.ip or IPv4Address(0),
            ipv6=pod.ipv6,
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
        pod = self._store.pods.get(key)
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

    # ----------------------------------------------------------------- the diff

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
            value = self._store.ipcache_value(prefix)
            if value is not None:
                self._ipcache[prefix] = value
                new_ipc.append(IPCacheEntry(prefix, value))
        self._dirty_eps.clear()
        self._dirty_prefixes.clear()
        ue, de = diff_sets(old_eps, new_eps, endpoint_key)
        ui, di = diff_sets(old_ipc, new_ipc, ipcache_key)
        up, dp = diff_sets(old_entries, new_entries, policy_key)
        return KernelDiff(ue, de, ui, di, up, dp)
