"""The service map of the demo's cluster in a real headless browser: the real agent in a test topology,
real connections between pods, the map server reading the agent's flow API. Nodes and edges from the
traffic with their verdict styles, the policy in an edge's panel, a new drop on the map within 2 s, the
filters; a screenshot of the map is kept in tests/ui/artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from meshagent.demo.manifests import PODS
from meshagent.demo.run import Demo
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from tests.ui.browser import (
    edge_state,
    headless_chromium,
    page_errors,
    save_screenshot,
    shown_nodes,
    texts,
    wait_for_edges,
    wait_js,
)

pytestmark = pytest.mark.kernel

SPECS = {spec.name: spec for spec in PODS}
# The demo's calls and the edge each draws, in the style its verdict gets.
EXPECTED = {
    "default/stray>shop/frontend:8080/TCP": "forwarded",
    "shop/frontend>shop/cart:8080/TCP": "forwarded",
    "default/stray>shop/cart:8080/TCP": "dropped",
    "shop/cart>data/db:5432/TCP": "forwarded",
    "shop/frontend>data/db:5432/TCP": "audit",
}
STYLES = {
    "forwarded": ("rgb(46,133,64)", "solid"),
    "dropped": ("rgb(192,57,43)", "dashed"),
    "audit": ("rgb(230,126,34)", "dotted"),
}


@pytest.fixture(scope="module")
def demo_map() -> Iterator[tuple[Demo, Any]]:
    demo = Demo(duration=None, keep=False)
    try:
        demo.build()
        demo.start_agent()
        demo.start_ui()
        with headless_chromium() as driver:
            driver.get(demo.ui_url)
            wait_js(driver, "return document.getElementById('status').classList.contains('connected')")
            yield demo, driver
    finally:
        demo.teardown()


def call(demo: Demo, client: str, server: str, port: int | None = None) -> dict[str, Any]:
    spec = SPECS[server]
    return demo.pods[client].probe("tcp", demo.addresses[server], port or spec.port, timeout=0.5)


def drive(demo: Demo) -> None:
    for edge_id in EXPECTED:
        (client, server) = (end.split("/")[1].split(":")[0] for end in edge_id.split(">"))
        call(demo, client, server)


def test_traffic_draws_nodes_and_edges_in_verdict_styles(demo_map: tuple[Demo, Any]) -> None:
    demo, driver = demo_map
    drive(demo)
    wait_for_edges(driver, EXPECTED)
    for edge_id, verdict in EXPECTED.items():
        drawn = edge_state(driver, edge_id)
        assert drawn is not None
        assert (drawn["color"], drawn["style"]) == STYLES[verdict], edge_id
    nodes = shown_nodes(driver)
    for spec in PODS:
        assert nodes[f"{spec.namespace}/{spec.name}"] == f"ns:{spec.namespace}"  # grouped by namespace
    path = save_screenshot(driver, "service-map-demo.png")
    assert path.stat().st_size > 10_000


def test_edge_panel_names_the_policy_and_traces_it(demo_map: tuple[Demo, Any]) -> None:
    demo, driver = demo_map
    call(demo, "stray", "cart")
    edge_id = "default/stray>shop/cart:8080/TCP"
    wait_for_edges(driver, {edge_id: "dropped"})
    click_edge(driver, edge_id)
    wait_js(driver, "return document.querySelector('#panel .trace-dir') !== null")
    assert texts(driver, "#panel h3")[0].startswith("default/stray → shop/cart TCP:8080")
    denied = texts(driver, "#panel li.policy.denied")
    assert any("NetworkPolicy shop/default-deny at ingress" in text for text in denied), denied
    assert any("default deny" in line for line in texts(driver, "#panel .why li"))
    (trace,) = texts(driver, "#panel .trace-verdict")
    assert trace.startswith("default/stray") and trace.endswith("DENIED")
    directions = texts(driver, "#panel .trace-dir")
    (ingress,) = [d for d in directions if d.startswith("ingress to shop/cart: DENIED")]
    assert "isolated by" in ingress and "default-deny" in ingress
    save_screenshot(driver, "service-map-edge-panel.png")
    driver.find_element(By.ID, "panel-close").click()


def test_a_new_drop_is_on_the_map_within_two_seconds(demo_map: tuple[Demo, Any]) -> None:
    demo, driver = demo_map
    edge_id = "default/stray>shop/cart:9999/TCP"  # a port nothing has tried: a new edge
    assert edge_state(driver, edge_id) is None
    result = call(demo, "stray", "cart", 9999)
    assert not result["ok"]
    wait_for_edges(driver, {edge_id: "dropped"})
    # From the drop (the flow's own time) to the edge on the map (the page's clock; the same machine).
    latency = driver.execute_script(
        """
        const s = window.meshmap.state;
        return s.firstShown.get(arguments[0]) - s.edges.get(arguments[0]).first_seen;
        """,
        edge_id,
    )
    print(f"drop to map: {latency:.3f} s")
    assert 0 <= latency < 2.0
    dropped_rows = texts(driver, "#flows tbody tr.verdict-dropped")
    assert any(f"{demo.addresses['cart']}:9999" in row for row in dropped_rows)


def ends_in_table(driver: Any) -> list[str]:
    """The from and to cells of each row of the flows table (its policy cells name namespaces too)."""
    return [" ".join(row.split("\t")[1:3]) for row in texts(driver, "#flows tbody tr")]


def click_edge(driver: Any, edge_id: str, attempts: int = 4) -> None:
    """A real click on the edge's midpoint (the map is a canvas: no element to click). A layout that
    starts between reading the midpoint and clicking (a new node appeared) moves the edge away: then
    the click is made again where the edge now is."""
    area = driver.find_element(By.ID, "map")
    for _ in range(attempts):
        x, y, width, height = driver.execute_script(
            """
            const cy = window.meshmap.cy;
            cy.fit(undefined, 40);
            const p = cy.getElementById(arguments[0]).renderedMidpoint();
            const box = document.getElementById('map').getBoundingClientRect();
            return [p.x, p.y, box.width, box.height];
            """,
            edge_id,
        )
        ActionChains(driver).move_to_element_with_offset(
            area, int(x - width / 2), int(y - height / 2)
        ).click().perform()
        try:
            wait_js(driver, "return window.meshmap.state.panelEdge === arguments[0]", edge_id, timeout=3)
            wait_js(driver, "return document.querySelector('#panel .why') !== null", timeout=10)
            return
        except TimeoutException:
            continue
    raise AssertionError(f"clicking {edge_id} did not open its panel in {attempts} attempts")


def _drawn(driver: Any) -> tuple[set[str], set[str]]:
    nodes, edges = driver.execute_script(
        """
        const cy = window.meshmap.cy;
        return [cy.nodes().not('.ns').map((n) => n.id()), cy.edges().map((e) => e.id())];
        """
    )
    return set(nodes), set(edges)


def test_filters_namespace_verdict_and_hidden_workloads(demo_map: tuple[Demo, Any]) -> None:
    demo, driver = demo_map
    drive(demo)
    wait_for_edges(driver, EXPECTED)

    # Verdict: without drops, no edge is drawn as dropped and the table has no dropped row.
    driver.find_element(By.ID, "verdict-dropped").click()
    wait_js(driver, "return window.meshmap.cy.edges('.dropped').length === 0")
    assert not texts(driver, "#flows tbody tr.verdict-dropped")
    assert "shop/frontend>data/db:5432/TCP" in _drawn(driver)[1]
    driver.find_element(By.ID, "verdict-dropped").click()
    wait_js(driver, "return window.meshmap.cy.edges('.dropped').length > 0")

    # Namespaces: one off, then all at once.
    driver.find_element(By.ID, "ns-data").click()
    wait_js(driver, "return window.meshmap.cy.getElementById('data/db').empty()")
    nodes, edges = _drawn(driver)
    assert not any(e.split(">")[1].startswith("data/") for e in edges)
    assert "shop/cart" in nodes
    assert not driver.find_element(By.ID, "ns-all").is_selected()
    rows = ends_in_table(driver)
    assert rows and not [row for row in rows if "data/db" in row]
    driver.find_element(By.ID, "ns-all").click()
    wait_js(driver, "return !window.meshmap.cy.getElementById('data/db').empty()")

    # Hiding a noisy workload removes it and its edges, from the map and from the table.
    driver.find_element(By.ID, "hide").send_keys("default/stray")
    wait_js(driver, "return window.meshmap.cy.getElementById('default/stray').empty()")
    nodes, edges = _drawn(driver)
    assert not any(e.startswith("default/stray>") for e in edges) and "shop/frontend" in nodes
    rows = ends_in_table(driver)
    assert not page_errors(driver)
    assert rows and not [row for row in rows if "default/stray" in row]
    driver.find_element(By.ID, "hide").clear()
    driver.execute_script("document.getElementById('hide').dispatchEvent(new Event('input'))")
    wait_js(driver, "return !window.meshmap.cy.getElementById('default/stray').empty()")
