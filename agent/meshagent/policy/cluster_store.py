"""What the compiler knows of the cluster: namespaces, pods, the label identities they hold, addresses.

A store with no policy in it. Adding or removing a pod says what happened to its identity, so the peer
resolver and the compiler can react to exactly that; everything else here is a read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from meshagent.model.cluster import Namespace, Pod
from meshagent.model.ip import IPAddress, IPNetwork, is_host_prefix
from meshagent.model.kernel_state import IDENTITY_HOST, Protocol, family6_identity, user_identity
from meshagent.policy.addresses import AddressIndex, PodKey
from meshagent.policy.decide import PortRange
from meshagent.policy.identity import IdentityAllocator, IdentityLabels, LabelFilter

LabelDicts = tuple[dict[str, str], dict[str, str]]  # (namespace labels, pod labels) of an identity


def pod_addresses(pod: Pod) -> tuple[IPAddress, ...]:
    """The pod's addresses, IPv4 first (status.podIPs: one per family)."""
    return tuple(ip for ip in (pod.ip, pod.ipv6) if ip is not None)


def namespace_labels(namespace: str, known: Namespace | None) -> dict[str, str]:
    return known.label_dict() if known is not None else Namespace(namespace).label_dict()


@dataclass(frozen=True)
class MembershipChange:
    """A pod with an address joined (or left) `identity`, which may have come (or gone) with it."""

    identity: int
    pod: Pod
    identity_appeared: bool = False
    identity_vanished: bool = False
    # The identity's pods gained their first IPv6 address with this pod, or lost their last.
    family6_changed: bool = False


class ClusterStore:
    def __init__(self, label_filter: LabelFilter, identities: IdentityAllocator) -> None:
        self.label_filter = label_filter
        self.identities = identities
        self.namespaces: dict[str, Namespace] = {}
        self.pods: dict[PodKey, Pod] = {}
        self.pods_by_ns: dict[str, set[PodKey]] = defaultdict(set)
        self.pod_identity: dict[PodKey, int] = {}
        self.id_labels: dict[int, IdentityLabels] = {}
        self.id_dicts: dict[int, LabelDicts] = {}
        self.id_members: dict[int, set[PodKey]] = {}
        self._ipv6_members: dict[int, int] = {}  # identity -> how many of its pods have an IPv6 address
        self.addresses = AddressIndex()  # pod IPs and policy prefixes, for ipBlock peers and the ipcache
        self.hosts: frozenset[IPAddress] = frozenset()

    # ----------------------------------------------------------------- namespaces and pods

    def labels_of_namespace(self, name: str) -> dict[str, str]:
        return namespace_labels(name, self.namespaces.get(name))

    def set_namespace(self, name: str, namespace: Namespace | None) -> None:
        if namespace is None:
            self.namespaces.pop(name, None)
        else:
            self.namespaces[name] = namespace

    def pods_in(self, namespace: str) -> list[Pod]:
        return [self.pods[k] for k in sorted(self.pods_by_ns.get(namespace, ()))]

    def add_pod(self, pod: Pod) -> MembershipChange | None:
        """Store `pod`; None when it holds no identity (no address yet, or the host's network). A pod has
        one identity whatever its address families (its IPv6 address carries it marked: ipcache_value)."""
        key = pod.key
        self.pods[key] = pod
        self.pods_by_ns[pod.namespace].add(key)
        if not pod_addresses(pod) or pod.host_network:
            return None
        labels = self._identity_labels_of(pod)
        ident = self.identities.labels_identity(labels)
        self.pod_identity[key] = ident
        for address in pod_addresses(pod):
            self.addresses.add_pod(address, key)
        first6 = False
        if pod.ipv6 is not None:
            count = self._ipv6_members.get(ident, 0)
            self._ipv6_members[ident] = count + 1
            first6 = count == 0
        members = self.id_members.get(ident)
        if members is not None:
            members.add(key)
            return MembershipChange(ident, pod, family6_changed=first6)
        self.id_members[ident] = {key}
        self.id_labels[ident] = labels
        self.id_dicts[ident] = (labels.namespace_dict(), labels.pod_dict())
        return MembershipChange(ident, pod, identity_appeared=True, family6_changed=first6)

    def remove_pod(self, pod: Pod) -> MembershipChange | None:
        key = pod.key
        del self.pods[key]
        self.pods_by_ns[pod.namespace].discard(key)
        ident = self.pod_identity.pop(key, None)
        if ident is None:
            return None
        for address in pod_addresses(pod):
            self.addresses.remove_pod(address, key)
        last6 = False
        if pod.ipv6 is not None:
            count = self._ipv6_members[ident] - 1
            last6 = count == 0
            if last6:
                del self._ipv6_members[ident]
            else:
                self._ipv6_members[ident] = count
        members = self.id_members[ident]
        members.discard(key)
        if members:
            return MembershipChange(ident, pod, family6_changed=last6)
        del self.id_members[ident]
        self.identities.release_labels(self.id_labels.pop(ident))
        del self.id_dicts[ident]
        return MembershipChange(ident, pod, identity_vanished=True, family6_changed=last6)

    def _identity_labels_of(self, pod: Pod) -> IdentityLabels:
        return IdentityLabels(
            namespace=pod.namespace,
            namespace_labels=self.label_filter.apply(self.labels_of_namespace(pod.namespace).items()),
            pod_labels=self.label_filter.apply(pod.labels),
        )

    # ----------------------------------------------------------------- identities

    def has_ipv6_members(self, ident: int) -> bool:
        """Whether some pod of `ident` has an IPv6 address (its traffic then carries the marked identity)."""
        return ident in self._ipv6_members

    def member_ips(self, ident: int) -> list[IPAddress]:
        """Every address (of both families) of the pods holding `ident`."""
        return [ip for k in self.id_members.get(ident, ()) for ip in pod_addresses(self.pods[k])]

    def identity_ports(self, ident: int, name: str, protocol: Protocol) -> set[PortRange]:
        """Ports named `name` on the pods of `ident`, marked or not (protocol ANY: whatever protocol the
        port has)."""
        ranges = set()
        for key in self.id_members.get(user_identity(ident), ()):
            for port in self.pods[key].ports:
                if port.name == name and protocol in (Protocol.ANY, port.protocol):
                    ranges.add(PortRange(port.protocol, port.port, port.port))
        return ranges

    # ----------------------------------------------------------------- addresses

    def set_hosts(self, addresses: Iterable[IPAddress]) -> frozenset[IPAddress]:
        """The node's own addresses; returns those that came or went."""
        new = frozenset(addresses)
        moved = new ^ self.hosts
        self.hosts = new
        return moved

    def shadowed(self, prefix: IPNetwork) -> bool:
        """A /32 (or /128) that a pod or the node holds: its packets carry that identity, not the prefix's."""
        return is_host_prefix(prefix) and (
            self.addresses.holds_pod(prefix.network_address) or prefix.network_address in self.hosts
        )

    def ipcache_value(self, prefix: IPNetwork) -> int | None:
        if is_host_prefix(prefix) and prefix.network_address in self.hosts:
            return IDENTITY_HOST
        if is_host_prefix(prefix):
            holders = self.addresses.pods_at(prefix.network_address)
            if holders:
                ident = self.pod_identity[min(holders)]
                # A pod's IPv6 traffic is judged apart from its IPv4 traffic (ipBlocks are per family).
                return family6_identity(ident) if prefix.version == 6 else ident
        if self.addresses.has_prefix(prefix):
            return self.identities.cidr_identity(prefix)
        return None
