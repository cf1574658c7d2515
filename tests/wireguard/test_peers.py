"""Peers from Node and Pod objects, and the steps from a device's peers to the wanted ones."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from meshagent.wireguard.keys import generate_key_pair
from meshagent.wireguard.peers import PUBLIC_KEY_ANNOTATION, Peer, node_from_object, plan_peers
from meshagent.wireguard.updates import DevicePeer, endpoint_text, plan_update

OWN = generate_key_pair().public_key
KEY_2 = generate_key_pair().public_key
KEY_3 = generate_key_pair().public_key


def node(
    name: str, address: str | None, key: str | None = None, cidr: str = "10.244.9.0/24"
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr},
        "status": {"addresses": [{"type": "InternalIP", "address": address}] if address else []},
    }
    if key is not None:
        obj["metadata"]["annotations"] = {PUBLIC_KEY_ANNOTATION: key}
    return obj


def pod(name: str, node_name: str, ip: str, *, host_network: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node_name, "hostNetwork": host_network},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
    }


NODES = [
    node("node-1", "192.168.254.11", OWN, "10.244.1.0/24"),
    node("node-2", "192.168.254.12", KEY_2, "10.244.2.0/24"),
    node("node-3", "192.168.254.13", None, "10.244.3.0/24"),
]
PODS = [
    pod("a", "node-1", "10.244.1.10"),
    pod("b", "node-2", "10.244.2.10"),
    pod("c", "node-2", "10.244.2.11"),
    pod("host", "node-2", "192.168.254.12", host_network=True),
    pod("d", "node-3", "10.244.3.10"),
    pod("pending", "node-2", ""),
]


def test_one_peer_per_remote_node_with_a_key_its_pods_allowed() -> None:
    plan = plan_peers(NODES, PODS, local_node="node-1", local_public_key=OWN)
    assert plan.peers == {
        KEY_2: Peer(
            node="node-2",
            public_key=KEY_2,
            endpoint=IPv4Address("192.168.254.12"),
            allowed_ips=frozenset({IPv4Address("10.244.2.10"), IPv4Address("10.244.2.11")}),
        )
    }
    assert set(plan.plaintext_nodes) == {"node-3"}, "a node without a key yet stays plaintext"
    assert plan.rejected == []
    assert [str(c) for c in plan.remote_pod_cidrs["node-3"]] == ["10.244.3.0/24"]


def test_duplicate_keys_give_neither_node_a_peer() -> None:
    nodes = [*NODES[:2], node("node-3", "192.168.254.13", KEY_2)]
    plan = plan_peers(nodes, PODS, local_node="node-1", local_public_key=OWN)
    assert plan.peers == {}
    assert plan.rejected == [
        "node-2: its public key is also on node-3",
        "node-3: its public key is also on node-2",
    ]
    assert set(plan.plaintext_nodes) == {"node-2", "node-3"}


def test_our_own_key_on_another_node_is_rejected() -> None:
    nodes = [NODES[0], node("node-2", "192.168.254.12", OWN)]
    plan = plan_peers(nodes, PODS, local_node="node-1", local_public_key=OWN)
    assert plan.peers == {}
    assert plan.rejected == ["node-2: its public key is this node's own"]


def test_invalid_key_and_missing_address_are_rejected_with_reasons() -> None:
    nodes = [NODES[0], node("node-2", "192.168.254.12", "garbage!"), node("node-3", None, KEY_3)]
    plan = plan_peers(nodes, PODS, local_node="node-1", local_public_key=OWN)
    assert plan.peers == {}
    assert plan.rejected == [
        f"node-2: annotation {PUBLIC_KEY_ANNOTATION}: public key is not base64",
        "node-3: no InternalIP to reach it by",
    ]


def _peer(*ips: str, key: str = KEY_2, endpoint: str = "192.168.254.12") -> Peer:
    return Peer("node-2", key, ip_address(endpoint), frozenset(ip_address(ip) for ip in ips))


def _device_peer(*ips: str, key: str = KEY_2, endpoint: str = "192.168.254.12:51871") -> DevicePeer:
    return DevicePeer(key, endpoint, frozenset(ip_address(ip) for ip in ips))


def test_new_peer_gets_its_pods_and_routes() -> None:
    update = plan_update({}, {KEY_2: _peer("10.244.2.10")}, [], port=51871)
    assert [(c.peer.public_key, c.add_allowed_ips, c.endpoint_changed) for c in update.set_peers] == [
        (KEY_2, frozenset({IPv4Address("10.244.2.10")}), True)
    ]
    assert update.add_routes == [IPv4Address("10.244.2.10")]
    assert not update.remove_peers and not update.remove_routes


def test_pod_added_only_adds_never_rewrites_the_staying_pods() -> None:
    current = {KEY_2: _device_peer("10.244.2.10")}
    update = plan_update(
        current, {KEY_2: _peer("10.244.2.10", "10.244.2.11")}, [IPv4Address("10.244.2.10")], port=51871
    )
    (change,) = update.set_peers
    assert change.add_allowed_ips == frozenset({IPv4Address("10.244.2.11")})
    assert not change.endpoint_changed
    assert update.add_routes == [IPv4Address("10.244.2.11")]
    assert update.remove_routes == []


def test_pod_gone_loses_its_route_and_the_peer_is_not_rewritten() -> None:
    current = {KEY_2: _device_peer("10.244.2.10", "10.244.2.11")}
    routes = [IPv4Address("10.244.2.10"), IPv4Address("10.244.2.11")]
    update = plan_update(current, {KEY_2: _peer("10.244.2.10")}, routes, port=51871)
    assert update.set_peers == []
    assert update.remove_routes == [IPv4Address("10.244.2.11")]
    assert update.add_routes == []


def test_in_step_device_needs_nothing() -> None:
    current = {KEY_2: _device_peer("10.244.2.10")}
    assert plan_update(current, {KEY_2: _peer("10.244.2.10")}, [IPv4Address("10.244.2.10")], port=51871).empty


def test_node_gone_or_rekeyed_replaces_its_peer_and_moves_endpoint() -> None:
    current = {KEY_2: _device_peer("10.244.2.10")}
    update = plan_update(
        current, {KEY_3: _peer("10.244.2.10", key=KEY_3)}, [IPv4Address("10.244.2.10")], port=51871
    )
    assert [c.peer.public_key for c in update.set_peers] == [KEY_3]
    assert update.remove_peers == [KEY_2]
    assert update.add_routes == [] and update.remove_routes == [], "the route stays: no gap for the pod"
    moved = plan_update(current, {KEY_2: _peer("10.244.2.10", endpoint="192.168.254.99")}, [], port=51871)
    assert moved.set_peers[0].endpoint_changed


def dual_stack_node(name: str, addresses: list[str], key: str | None, cidrs: list[str]) -> dict[str, Any]:
    obj = node(name, None, key)
    obj["spec"] = {"podCIDR": cidrs[0], "podCIDRs": cidrs}
    obj["status"] = {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]}
    return obj


def dual_stack_pod(name: str, node_name: str, *ips: str) -> dict[str, Any]:
    obj = pod(name, node_name, ips[0])
    obj["status"]["podIPs"] = [{"ip": ip} for ip in ips]
    return obj


def test_ipv6_pod_addresses_and_ranges_belong_to_the_nodes_peer() -> None:
    nodes = [
        NODES[0],
        dual_stack_node("node-2", ["192.168.254.12", "fd00:ff::12"], KEY_2, ["10.244.2.0/24", "fd00:2::/64"]),
        dual_stack_node("node-3", ["192.168.254.13"], None, ["10.244.3.0/24", "fd00:3::/64"]),
    ]
    pods = [
        dual_stack_pod("b", "node-2", "10.244.2.10", "fd00:2::10"),
        dual_stack_pod("ipv6-only", "node-2", "fd00:2::11"),
        dual_stack_pod("d", "node-3", "10.244.3.10", "fd00:3::10"),
    ]
    plan = plan_peers(nodes, pods, local_node="node-1", local_public_key=OWN)
    (peer,) = plan.peers.values()
    assert peer.endpoint == IPv4Address("192.168.254.12"), "IPv4 underlay preferred: it carries IPv6 too"
    assert peer.allowed_ips == {
        IPv4Address("10.244.2.10"),
        IPv6Address("fd00:2::10"),
        IPv6Address("fd00:2::11"),
    }
    assert plan.remote_pod_cidrs["node-2"] == (IPv4Network("10.244.2.0/24"), IPv6Network("fd00:2::/64"))
    assert plan.remote_pod_cidrs["node-3"] == (IPv4Network("10.244.3.0/24"), IPv6Network("fd00:3::/64"))
    assert set(plan.plaintext_nodes) == {"node-3"}, "a keyless node's IPv6 range is judged too"


def test_an_ipv6_internal_ip_is_the_endpoint_only_when_it_is_the_only_one() -> None:
    ipv6_only = node_from_object(dual_stack_node("n", ["fd00:ff::12"], KEY_2, ["fd00:2::/64"]))
    assert ipv6_only.address == IPv6Address("fd00:ff::12")
    assert ipv6_only.pod_cidrs == (IPv6Network("fd00:2::/64"),)
    ipv6_first = node_from_object(
        dual_stack_node("n", ["fd00:ff::12", "192.168.254.12"], KEY_2, ["fd00:2::/64"])
    )
    assert ipv6_first.address == IPv4Address("192.168.254.12")
    garbled = node_from_object(dual_stack_node("n", ["not-an-address"], KEY_2, ["fd00:2::1/64", "bad"]))
    assert garbled.address is None and garbled.pod_cidrs == (), "unparsable entries are skipped, not guessed"


def test_ipv6_pods_get_routes_and_allowed_ips_in_the_same_steps() -> None:
    update = plan_update({}, {KEY_2: _peer("10.244.2.10", "fd00:2::10")}, [], port=51871)
    (change,) = update.set_peers
    assert change.add_allowed_ips == {IPv4Address("10.244.2.10"), IPv6Address("fd00:2::10")}
    assert update.add_routes == [IPv4Address("10.244.2.10"), IPv6Address("fd00:2::10")], "IPv4 first"
    current = {KEY_2: _device_peer("10.244.2.10", "fd00:2::10", "fd00:2::11")}
    routes = [IPv4Address("10.244.2.10"), IPv6Address("fd00:2::10"), IPv6Address("fd00:2::11")]
    gone = plan_update(current, {KEY_2: _peer("10.244.2.10", "fd00:2::10")}, routes, port=51871)
    assert gone.set_peers == [], "the staying pods' entries are not rewritten"
    assert gone.remove_routes == [IPv6Address("fd00:2::11")]


def test_an_ipv6_endpoint_is_compared_in_brackets() -> None:
    peer = _peer("fd00:2::10", endpoint="fd00:ff::12")
    assert endpoint_text(peer.endpoint, 51871) == "[fd00:ff::12]:51871"
    current = {KEY_2: _device_peer("fd00:2::10", endpoint="[fd00:ff::12]:51871")}
    assert plan_update(current, {KEY_2: peer}, [IPv6Address("fd00:2::10")], port=51871).empty
