"""The service map of the demo on two nodes, in a real headless browser: one agent per node, the relay
before them, and the map reading the relay (as `make demo NODES=2` starts it). Calls between pods on
different nodes are on the map; a node's own host and the other node's address are each that node, by
name: the agent that sees a remote node's address labels it the world, and the map names it from the
demo's Node objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from meshagent.demo.manifests import PODS
from meshagent.demo.run import Demo
from meshagent.testing.cluster import ClusterNode
from meshagent.testing.topology import Pod

from tests.ui.browser import (
    edge_state,
    headless_chromium,
    save_screenshot,
    shown_nodes,
    wait_for_edges,
    wait_js,
)

pytestmark = pytest.mark.kernel

SPECS = {spec.name: spec for spec in PODS}


@pytest.fixture(scope="module")
def two_node_map() -> Iterator[tuple[Demo, Any]]:
    demo = Demo(duration=None, keep=False, nodes=2)
    try:
        demo.build()
        demo.start_agent()
        demo.start_relay()
        demo.start_ui()
        with headless_chromium() as driver:
            driver.get(demo.ui_url)
            wait_js(driver, "return document.getElementById('status').classList.contains('connected')")
            yield demo, driver
    finally:
        demo.teardown()


def host_of(node: ClusterNode) -> Pod:
    """Calls from the node itself (its network namespace, from its InternalIP), as a kubelet probes."""
    return Pod(name=f"{node.name}-host", netns=node.netns, ip=node.address, host_ifname="", ifindex=0)


def node_holding(demo: Demo, pod: str) -> ClusterNode:
    return next(node for node in demo.cluster.nodes if pod in node.pods)


def drawn_edges(driver: Any) -> list[str]:
    edges: list[str] = driver.execute_script("return window.meshmap.cy.edges().map((e) => e.id());")
    return edges


def test_map_reads_every_node_through_the_relay(two_node_map: tuple[Demo, Any]) -> None:
    demo, driver = two_node_map
    assert demo.relay is not None
    assert "relay.sock" in demo.flow_server()
    cart_node, frontend_node = node_holding(demo, "cart"), node_holding(demo, "frontend")
    assert cart_node is not frontend_node  # the call crosses nodes
    assert demo.pods["frontend"].probe("tcp", demo.addresses["cart"], 8080, timeout=1.0)["ok"]
    assert not demo.pods["stray"].probe("tcp", demo.addresses["cart"], 8080, timeout=1.0)["ok"]

    # The cart's own node may reach it (the host identity); the other node may not (default deny in
    # shop, and a remote node is no peer any policy here admits).
    other = next(node for node in demo.cluster.nodes if node is not cart_node)
    assert host_of(cart_node).probe("tcp", demo.addresses["cart"], 8080, timeout=1.0)["ok"]
    assert not host_of(other).probe("tcp", demo.addresses["cart"], 8080, timeout=1.0)["ok"]

    expected = {
        "shop/frontend>shop/cart:8080/TCP": "forwarded",
        "default/stray>shop/cart:8080/TCP": "dropped",
        f"node:{cart_node.name}>shop/cart:8080/TCP": "forwarded",
        f"node:{other.name}>shop/cart:8080/TCP": "dropped",
    }
    wait_for_edges(driver, expected, timeout=15.0)
    nodes = shown_nodes(driver)
    for node in demo.cluster.nodes:
        assert nodes[f"node:{node.name}"] is None  # outside every namespace box
    # The other node's address was not taken for the world. (Other world edges may be drawn: the
    # datapath drops non-IPv4 packets of a fresh interface, IPv6 neighbour discovery, and such a flow
    # carries no addresses: world to world, protocol IP.)
    assert not [e for e in drawn_edges(driver) if e.startswith("world>shop/cart:")]
    drawn = edge_state(driver, f"node:{other.name}>shop/cart:8080/TCP")
    assert drawn is not None and "dropped" in drawn["classes"]
    path = save_screenshot(driver, "service-map-two-nodes.png")
    assert path.stat().st_size > 10_000
