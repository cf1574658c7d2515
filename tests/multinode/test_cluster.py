"""The multi-node cluster in a box itself: pods on different nodes reach each other across the underlay,
nodes speak from their InternalIP, nothing can leave the machine, and everything goes away on close."""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Address, IPv6Address

import pytest
import yaml
from meshagent.testing.cluster import UNDERLAY_IFNAME, ClusterTopology, pod_cidr6_of, pod_cidr_of

pytestmark = pytest.mark.kernel


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {entry["name"] for entry in json.loads(out or "[]")}


def _routes(netns: str, *, family: str = "-4") -> list[dict[str, str]]:
    out = subprocess.run(
        ["ip", family, "-n", netns, "-j", "route"], capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout))


def test_three_nodes_route_pods_to_each_other_and_nothing_else() -> None:
    with ClusterTopology(3) as cluster:
        namespaces = {cluster.underlay, *(node.netns for node in cluster.nodes)}
        assert namespaces <= _netns_names()
        pods = [node.add_pod(f"p{node.index}") for node in cluster.nodes]
        for node, pod in zip(cluster.nodes, pods, strict=True):
            assert pod.ip in node.pod_cidr == pod_cidr_of(node.index)
            # Dual-stack by default: the same host number in the node's IPv6 pod CIDR.
            assert pod.ipv6 in node.pod_cidr6 == pod_cidr6_of(node.index)
            assert int(pod.ipv6) - int(node.pod_cidr6.network_address) == int(pod.ip) - int(
                node.pod_cidr.network_address
            )
            pod.serve(tcp=(80,), udp=(80,))
        for client in pods:
            for server in pods:
                if client is not server:
                    assert server.ipv6 is not None
                    for address in (server.ip, server.ipv6):
                        assert client.probe("tcp", address, 80)["ok"], (client.name, server.name, address)
                        assert client.probe("udp", address, 80)["ok"], (client.name, server.name, address)

        for node in cluster.nodes:
            routes = _routes(node.netns)
            # Nothing off the machine: the default route of every node is unreachable.
            assert any(r["dst"] == "default" and r.get("type") == "unreachable" for r in routes)
            # Its own pods are reached from its InternalIP (the address its Node object lists).
            local = next(r for r in routes if r["dst"] == str(pods[node.index].ip))
            assert local["prefsrc"] == str(node.address)
            routes6 = _routes(node.netns, family="-6")
            assert any(r["dst"] == "default" and r.get("type") == "unreachable" for r in routes6)
            local6 = next(r for r in routes6 if r["dst"] == str(pods[node.index].ipv6))
            assert local6["prefsrc"] == str(node.address6)
            # Other nodes' pod CIDRs go via those nodes' InternalIPs on the underlay.
            vias = {r["dst"]: r.get("gateway") for r in routes if r.get("dev") == UNDERLAY_IFNAME}
            for other in cluster.nodes:
                if other is not node:
                    assert vias[str(other.pod_cidr)] == str(other.address)
        # The underlay itself holds no address at all: it is only a wire between the nodes.
        out = subprocess.run(
            ["ip", "-n", cluster.underlay, "-j", "addr"], capture_output=True, text=True, check=True
        ).stdout
        assert [
            a
            for link in json.loads(out)
            for a in link.get("addr_info", [])
            if a["local"] != "127.0.0.1" and a["family"] == "inet"
        ] == []

        nodes = list(yaml.safe_load_all(cluster.manifests()))
        assert [n["metadata"]["name"] for n in nodes] == ["node-1", "node-2", "node-3"]
        assert [IPv4Address(n["status"]["addresses"][0]["address"]) for n in nodes] == [
            node.address for node in cluster.nodes
        ]
        assert [n["spec"]["podCIDR"] for n in nodes] == [str(node.pod_cidr) for node in cluster.nodes]
    assert not namespaces & _netns_names()


def test_a_pod_outside_its_nodes_cidr_is_refused_and_bad_sizes_too() -> None:
    with ClusterTopology(2) as cluster:
        with pytest.raises(ValueError, match="outside node node-1's pod CIDR"):
            cluster.nodes[0].add_pod("stray", cluster.nodes[1].pod_cidr.network_address + 5)
        with pytest.raises(ValueError, match="outside node node-1's pod CIDR fd00:10:244:1::/64"):
            cluster.nodes[0].add_pod("stray6", ipv6=cluster.nodes[1].pod_cidr6.network_address + 5)
        assert cluster.nodes[0].pods == {}
    with pytest.raises(ValueError, match="at least one node"):
        ClusterTopology(0)
    with pytest.raises(ValueError, match="2 node names for 3 nodes"):
        ClusterTopology(3, node_names=["a", "b"])


def test_an_explicit_ipv6_address_is_kept_and_an_opt_out_pod_has_none() -> None:
    with ClusterTopology(1) as cluster:
        node = cluster.nodes[0]
        chosen = node.add_pod("chosen", ipv6=node.pod_cidr6.network_address + 0x99)
        assert chosen.ipv6 == IPv6Address("fd00:10:244:1::99")
        v4only = node.add_pod("v4only", ipv6=False)
        assert v4only.ipv6 is None
        addresses = subprocess.run(
            ["ip", "-6", "-n", v4only.netns, "-j", "addr", "show", "dev", "eth0", "scope", "global"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert [a for link in json.loads(addresses) for a in link.get("addr_info", [])] == []
        chosen.serve(tcp=(80,))
        assert v4only.probe("tcp", chosen.ip, 80)["ok"]
        assert not v4only.probe("tcp", chosen.ipv6, 80, timeout=0.5)["ok"]
