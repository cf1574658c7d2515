"""A throw-away cluster of several nodes in network namespaces (tests, benchmarks and the demo).

    underlay netns : a bridge and nothing else (no address): the "physical" network between nodes.
    node netns i   : a node as in meshagent.testing.topology (forwarding on, `unreachable` default
                     route), plus `ul0` on the underlay with the node's InternalIP, its pods inside its
                     own pod CIDR, and one route per other node: that node's pod CIDR via its InternalIP.
                     Dual-stack: every node has an IPv6 InternalIP and IPv6 pod CIDR too, routed the
                     same way; every pod gets an IPv6 address too, inside its node's IPv6 pod CIDR.

Traffic between pods of different nodes is plainly routed across the underlay (no tunnel, no NAT), as in
a cluster whose nodes share a layer-2 network. Routes to local pods carry `src <InternalIP>`, so what the
node itself sends to its pods comes from the address its Node object lists (the host identity).

Every address lives inside namespaces this module creates; nothing has a route off the machine. close()
removes everything, also on failure (use it as a context manager).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from meshagent.testing.topology import Pod, Topology, _ip

UNDERLAY_NETWORK = IPv4Network("192.168.254.0/24")
POD_NETWORK = IPv4Network("10.244.0.0/16")
UNDERLAY_NETWORK6 = IPv6Network("fd00:ff::/64")
POD_NETWORK6 = IPv6Network("fd00:10:244::/48")
UNDERLAY_IFNAME = "ul0"
_counter = itertools.count()


def pod_cidr_of(index: int) -> IPv4Network:
    """Node `index` (from 0) owns 10.244.<index+1>.0/24."""
    return IPv4Network(f"{POD_NETWORK.network_address + (index + 1) * 256}/24")


def underlay_address_of(index: int) -> IPv4Address:
    return UNDERLAY_NETWORK.network_address + 11 + index


def pod_cidr6_of(index: int) -> IPv6Network:
    """Node `index` (from 0) owns fd00:10:244:<index+1>::/64."""
    return IPv6Network(f"{POD_NETWORK6.network_address + ((index + 1) << 64)}/64")


def underlay_address6_of(index: int) -> IPv6Address:
    return UNDERLAY_NETWORK6.network_address + 11 + index


@dataclass
class ClusterNode:
    """One node: its Topology (namespace and pods) and what its Node object says about it."""

    index: int
    name: str
    topology: Topology
    address: IPv4Address  # InternalIP, on the underlay
    pod_cidr: IPv4Network
    address6: IPv6Address  # the IPv6 InternalIP
    pod_cidr6: IPv6Network
    _next_host: Iterator[int] = field(default_factory=lambda: itertools.count(10))

    @property
    def netns(self) -> str:
        return self.topology.node

    @property
    def pods(self) -> dict[str, Pod]:
        return self.topology.pods

    def next_pod_ip(self) -> IPv4Address:
        host = next(self._next_host)
        if host >= self.pod_cidr.num_addresses - 1:
            raise ValueError(f"node {self.name}: pod CIDR {self.pod_cidr} is full")
        return self.pod_cidr.network_address + host

    def ipv6_of(self, ip: IPv4Address) -> IPv6Address:
        """The IPv6 address a pod with IPv4 address `ip` gets by default: the same host number in the
        node's IPv6 pod CIDR (10.244.1.10 -> fd00:10:244:1::a), so both are told apart the same way."""
        return self.pod_cidr6.network_address + (int(ip) - int(self.pod_cidr.network_address))

    def add_pod(
        self, name: str, ip: str | IPv4Address | None = None, *, ipv6: str | IPv6Address | bool = True
    ) -> Pod:
        """A dual-stack pod on this node; its address comes from the node's pod CIDR unless given (it must
        be inside, since other nodes route to this node by that CIDR), and so must an IPv6 one. `ipv6`
        True derives that from the IPv4 address (ipv6_of), False leaves the pod IPv4-only."""
        address = IPv4Address(str(ip)) if ip is not None else self.next_pod_ip()
        if address not in self.pod_cidr:
            raise ValueError(f"pod {name}: {address} is outside node {self.name}'s pod CIDR {self.pod_cidr}")
        address6: IPv6Address | None
        if ipv6 is True:
            address6 = self.ipv6_of(address)
        elif ipv6 is False:
            address6 = None
        else:
            address6 = IPv6Address(str(ipv6))
            if address6 not in self.pod_cidr6:
                raise ValueError(
                    f"pod {name}: {address6} is outside node {self.name}'s pod CIDR {self.pod_cidr6}"
                )
        pod = self.topology.add_pod(name, address, ipv6=address6 if address6 is not None else False)
        if address6 is not None:
            _ip("-6", "route", "replace", f"{address6}/128", "dev", pod.host_ifname, "src",
                str(self.address6), netns=self.netns)  # fmt: skip
        _ip(
            "route",
            "replace",
            f"{address}/32",
            "dev",
            pod.host_ifname,
            "src",
            str(self.address),
            netns=self.netns,
        )
        return pod

    def remove_pod(self, name: str) -> None:
        self.topology.remove_pod(name)

    def node_manifest(self) -> str:
        """The Node object, as the API server would have it (InternalIP and pod CIDR)."""
        return textwrap.dedent(f"""\
            apiVersion: v1
            kind: Node
            metadata:
              name: {self.name}
              labels: {{kubernetes.io/hostname: {self.name}}}
            spec: {{podCIDR: {self.pod_cidr}, podCIDRs: [{self.pod_cidr}, "{self.pod_cidr6}"]}}
            status:
              addresses:
              - {{type: InternalIP, address: {self.address}}}
              - {{type: InternalIP, address: "{self.address6}"}}
              - {{type: Hostname, address: {self.name}}}
            """)


class ClusterTopology:
    """N nodes on one underlay; use as a context manager so it is always torn down."""

    def __init__(self, nodes: int, *, prefix: str | None = None, node_names: list[str] | None = None) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if nodes > 200:
            raise ValueError("at most 200 nodes fit the underlay and pod networks")
        if node_names is not None and len(node_names) != nodes:
            raise ValueError(f"{len(node_names)} node names for {nodes} nodes")
        # Interface names are at most 15 characters and carry the prefix: keep it short.
        self.prefix = prefix or f"mc{os.getpid() % 100000}x{next(_counter)}"
        self.underlay = f"{self.prefix}-ul"
        self.node_names = node_names or [f"node-{i + 1}" for i in range(nodes)]
        self.nodes: list[ClusterNode] = []
        self._created = False

    def __enter__(self) -> ClusterTopology:
        self.create()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def node(self, name: str) -> ClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def create(self) -> None:
        try:
            _ip("netns", "add", self.underlay)
            self._created = True
            _ip("link", "set", "lo", "up", netns=self.underlay)
            _ip("link", "add", "br0", "type", "bridge", netns=self.underlay)
            _ip("link", "set", "br0", "up", netns=self.underlay)
            for index, name in enumerate(self.node_names):
                self._add_node(index, name)
            for node in self.nodes:
                for other in self.nodes:
                    if other is not node:
                        _ip(
                            "route",
                            "add",
                            str(other.pod_cidr),
                            "via",
                            str(other.address),
                            "dev",
                            UNDERLAY_IFNAME,
                            netns=node.netns,
                        )
                        _ip("-6", "route", "add", str(other.pod_cidr6), "via", str(other.address6),
                            "dev", UNDERLAY_IFNAME, netns=node.netns)  # fmt: skip
        except Exception:
            self.close()
            raise

    def _add_node(self, index: int, name: str) -> None:
        topology = Topology(prefix=f"{self.prefix}n{index}")
        topology.create()
        node = ClusterNode(
            index=index,
            name=name,
            topology=topology,
            address=underlay_address_of(index),
            pod_cidr=pod_cidr_of(index),
            address6=underlay_address6_of(index),
            pod_cidr6=pod_cidr6_of(index),
        )
        self.nodes.append(node)
        bridge_side = f"{self.prefix[:10]}u{index}"[:15]
        _ip(
            "link",
            "add",
            bridge_side,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_IFNAME,
            "netns",
            node.netns,
            netns=self.underlay,
        )
        _ip("link", "set", bridge_side, "master", "br0", "up", netns=self.underlay)
        _ip(
            "addr",
            "add",
            f"{node.address}/{UNDERLAY_NETWORK.prefixlen}",
            "dev",
            UNDERLAY_IFNAME,
            netns=node.netns,
        )
        _ip("-6", "addr", "add", f"{node.address6}/{UNDERLAY_NETWORK6.prefixlen}", "dev", UNDERLAY_IFNAME,
            "nodad", netns=node.netns)  # fmt: skip
        _ip("link", "set", UNDERLAY_IFNAME, "up", netns=node.netns)

    def manifests(self) -> str:
        """Every Node object, as one YAML stream."""
        return "---\n".join(node.node_manifest() for node in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.topology.close()
        self.nodes.clear()
        if self._created:
            subprocess.run(["ip", "netns", "del", self.underlay], capture_output=True)
            self._created = False
