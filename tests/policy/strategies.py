"""Hypothesis strategies: small random clusters (namespaces x, y, z), policies and changes."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from hypothesis import strategies as st
from meshagent.model.admin_policy import AdminAction, AdminNetworkPolicy, AdminPort, AdminRule, AdminSelector
from meshagent.model.cluster import ContainerPort, LocalEndpoint, Namespace, Pod
from meshagent.model.kernel_state import Protocol
from meshagent.model.netpol import IPBlock, NetworkPolicy, PolicyPeer, PolicyPort, PolicyRule, PolicyType
from meshagent.model.selectors import LabelSelector, SelectorOperator, SelectorRequirement

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c", "d")
APPS = ("web", "db", "api")
PORTS = (53, 80, 81, 9090)
# Pod IPs come from 10.0.0.0/28; bare addresses probe CIDR peers inside and outside the blocks below.
POD_IPS = tuple(IPv4Address(f"10.0.0.{i}") for i in range(1, 15))
HOST_IP = IPv4Address("10.0.0.254")  # the node: inside several blocks below, yet always allowed
HOST_IP6 = IPv6Address("fd00::fe")
EXTERNAL_IPS = (
    *(
        IPv4Address(a)
        for a in ("10.0.0.200", "10.0.1.7", "192.168.1.5", "192.168.2.9", "8.8.8.8", "10.0.0.254")
    ),
    *(IPv6Address(a) for a in ("fd00::c8", "fd00:1::7", "2001:db8::5", "2001:db9::9", "fd00::fe")),
)
BLOCKS = (
    IPBlock(IPv4Network("10.0.0.0/24")),
    IPBlock(IPv4Network("10.0.0.0/24"), (IPv4Network("10.0.0.0/30"),)),
    IPBlock(IPv4Network("10.0.0.0/28"), (IPv4Network("10.0.0.4/32"), IPv4Network("10.0.0.8/29"))),
    IPBlock(IPv4Network("10.0.0.0/16")),
    IPBlock(IPv4Network("192.168.0.0/16"), (IPv4Network("192.168.1.0/24"),)),
    IPBlock(IPv4Network("0.0.0.0/0"), (IPv4Network("10.0.0.0/8"),)),
    IPBlock(IPv4Network("10.0.0.3/32")),
    # IPv6 blocks, judged on dual-stack pods' IPv6 traffic only.
    IPBlock(IPv6Network("fd00::/64")),
    IPBlock(IPv6Network("fd00::/120"), (IPv6Network("fd00::/126"),)),
    IPBlock(IPv6Network("fd00::3/128")),
    IPBlock(IPv6Network("::/0"), (IPv6Network("fd00::/16"),)),
    IPBlock(IPv6Network("2001:db8::/32")),
)


def ipv6_of(ip: IPv4Address) -> IPv6Address:
    """A dual-stack pod's IPv6 address, paired with its IPv4 one (so unique as they are)."""
    return IPv6Address(f"fd00::{int(ip) & 0xFF:x}")


# Named ports depend on the app label only, so pods sharing an identity share their named ports
# (the compiler's per-identity resolution of egress named ports relies on it; docs/policy.md).
APP_PORTS = {
    "web": (ContainerPort("http", 80), ContainerPort("dns", 53, Protocol.UDP)),
    "db": (ContainerPort("http", 81),),
    "api": (ContainerPort("http", 80), ContainerPort("metrics", 9090)),
}

label_pairs = st.sampled_from([("app", a) for a in APPS] + [("tier", "fe"), ("tier", "be")])


@st.composite
def pod_labels(draw: st.DrawFn) -> frozenset[tuple[str, str]]:
    labels = dict(draw(st.lists(label_pairs, max_size=2)))
    if draw(st.booleans()):
        labels["pod-template-hash"] = draw(st.sampled_from(["abc", "def"]))  # must not split identities
    return frozenset(labels.items())


@st.composite
def namespaces(draw: st.DrawFn, name: str) -> Namespace:
    pairs = st.sampled_from([("team", "a"), ("team", "b"), ("env", "prod")])
    labels = dict(draw(st.lists(pairs, max_size=2)))
    return Namespace(name, frozenset(labels.items()), audit=draw(st.integers(0, 9)) == 0)


@st.composite
def pods(draw: st.DrawFn, ip: IPv4Address | None, name: str, namespace: str | None = None) -> Pod:
    labels = draw(pod_labels())
    app = dict(labels).get("app")
    dual_stack = ip is not None and draw(st.booleans())
    return Pod(
        namespace=namespace or draw(st.sampled_from(NAMESPACES)),
        name=name,
        labels=labels,
        ip=ip,
        ports=APP_PORTS.get(app, ()) if app else (),
        ipv6=ipv6_of(ip) if dual_stack and ip is not None else None,
    )


@st.composite
def selectors(draw: st.DrawFn, keys: tuple[str, ...] = ("app", "tier")) -> LabelSelector:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return LabelSelector()
    if kind == 1:
        return LabelSelector(frozenset([draw(label_pairs)]))
    key = draw(st.sampled_from(keys))
    op = draw(st.sampled_from(list(SelectorOperator)))
    values: frozenset[str] = frozenset()
    if op in (SelectorOperator.IN, SelectorOperator.NOT_IN):
        values = frozenset(draw(st.lists(st.sampled_from([*APPS, "fe", "be"]), min_size=1, max_size=2)))
    return LabelSelector(match_expressions=(SelectorRequirement(key, op, values),))


@st.composite
def ns_selectors(draw: st.DrawFn) -> LabelSelector:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return LabelSelector()
    if kind == 1:
        return LabelSelector(frozenset([("kubernetes.io/metadata.name", draw(st.sampled_from(NAMESPACES)))]))
    return LabelSelector(frozenset([draw(st.sampled_from([("team", "a"), ("team", "b"), ("env", "prod")]))]))


@st.composite
def np_peers(draw: st.DrawFn) -> PolicyPeer:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return PolicyPeer(pod_selector=draw(selectors()))
    if kind == 1:
        return PolicyPeer(namespace_selector=draw(ns_selectors()))
    if kind == 2:
        return PolicyPeer(pod_selector=draw(selectors()), namespace_selector=draw(ns_selectors()))
    return PolicyPeer(ip_block=draw(st.sampled_from(BLOCKS)))


@st.composite
def np_ports(draw: st.DrawFn) -> PolicyPort:
    proto = draw(st.sampled_from([Protocol.TCP, Protocol.UDP, Protocol.SCTP]))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return PolicyPort(proto)
    if kind == 1:
        return PolicyPort(proto, draw(st.sampled_from(PORTS)))
    if kind == 2:
        lo = draw(st.sampled_from(PORTS))
        return PolicyPort(proto, lo, lo + draw(st.integers(0, 40)))
    return PolicyPort(proto, name=draw(st.sampled_from(["http", "dns", "metrics"])))


@st.composite
def np_rules(draw: st.DrawFn) -> PolicyRule:
    peers = None
    if draw(st.integers(0, 3)) > 0:
        peers = tuple(draw(st.lists(np_peers(), min_size=1, max_size=2)))
    ports = tuple(draw(st.lists(np_ports(), max_size=2)))
    return PolicyRule(peers, ports)


@st.composite
def network_policies(draw: st.DrawFn, name: str) -> NetworkPolicy:
    ingress = tuple(draw(st.lists(np_rules(), max_size=2)))
    egress = tuple(draw(st.lists(np_rules(), max_size=2)))
    types = draw(
        st.sampled_from(
            [None, {PolicyType.INGRESS}, {PolicyType.EGRESS}, {PolicyType.INGRESS, PolicyType.EGRESS}]
        )
    )
    if types is None:  # inferred, as the API server does
        types = {PolicyType.INGRESS} | ({PolicyType.EGRESS} if egress else set())
    return NetworkPolicy(
        namespace=draw(st.sampled_from(NAMESPACES)),
        name=name,
        pod_selector=draw(selectors()),
        policy_types=frozenset(types),
        ingress=ingress,
        egress=egress,
        audit=draw(st.integers(0, 7)) == 0,
    )


@st.composite
def admin_selectors(draw: st.DrawFn, *, networks: bool) -> AdminSelector:
    kind = draw(st.integers(0, 2 if networks else 1))
    if kind == 0:
        return AdminSelector(draw(ns_selectors()))
    if kind == 1:
        return AdminSelector(draw(ns_selectors()), draw(selectors()))
    return AdminSelector(LabelSelector(), networks=(draw(st.sampled_from(BLOCKS)).cidr,))


@st.composite
def admin_ports(draw: st.DrawFn) -> AdminPort:
    kind = draw(st.integers(0, 2))
    proto = draw(st.sampled_from([Protocol.TCP, Protocol.UDP]))
    if kind == 0:
        port = draw(st.sampled_from(PORTS))
        return AdminPort(proto, port, port)
    if kind == 1:
        lo = draw(st.sampled_from(PORTS))
        return AdminPort(proto, lo, lo + draw(st.integers(0, 30)))
    return AdminPort(Protocol.ANY, name=draw(st.sampled_from(["http", "dns"])))


@st.composite
def admin_rules(draw: st.DrawFn, *, egress: bool) -> AdminRule:
    return AdminRule(
        name="r",
        action=draw(st.sampled_from(list(AdminAction))),
        peers=tuple(draw(st.lists(admin_selectors(networks=egress), min_size=1, max_size=2))),
        ports=tuple(draw(st.lists(admin_ports(), max_size=2))),
    )


@st.composite
def admin_policies(draw: st.DrawFn, name: str) -> AdminNetworkPolicy:
    return AdminNetworkPolicy(
        name=name,
        priority=draw(st.integers(0, 3)),
        subject=draw(admin_selectors(networks=False)),
        ingress=tuple(draw(st.lists(admin_rules(egress=False), max_size=2))),
        egress=tuple(draw(st.lists(admin_rules(egress=True), max_size=2))),
        audit=draw(st.integers(0, 5)) == 0,
    )


@dataclass
class Cluster:
    namespaces: list[Namespace]
    pods: list[Pod]
    policies: list[NetworkPolicy | AdminNetworkPolicy]
    local: dict[tuple[str, str], LocalEndpoint]


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    nss = [draw(namespaces(n)) for n in NAMESPACES]
    count = draw(st.integers(1, 7))
    ips = draw(st.lists(st.sampled_from(POD_IPS), min_size=count, max_size=count, unique=True))
    pod_list = [draw(pods(ip, f"p{i}")) for i, ip in enumerate(ips)]
    nps: list[NetworkPolicy | AdminNetworkPolicy] = [
        draw(network_policies(f"np{i}")) for i in range(draw(st.integers(0, 4)))
    ]
    anps = [draw(admin_policies(f"anp{i}")) for i in range(draw(st.integers(0, 2)))]
    local_pods = [p for p in pod_list if draw(st.integers(0, 3)) > 0] or pod_list[:1]
    local = {p.key: LocalEndpoint(endpoint_id=i + 1, ifindex=100 + i) for i, p in enumerate(local_pods)}
    return Cluster(nss, pod_list, nps + anps, local)
