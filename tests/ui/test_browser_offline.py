"""The service map page in a real headless browser, fed by a real observer serving made-up flows (no
kernel needed): the time window filter, and a flow server that is unreachable at first, shown on the page
and picked up when it comes, without a reload."""

from __future__ import annotations

import time
from pathlib import Path

from meshagent.model.events import DropReason, EventType
from meshagent.model.kernel_state import Direction, Verdict
from selenium.webdriver.support.ui import Select

from tests.observer import helpers as h
from tests.ui.browser import edge_state, headless_chromium, texts, wait_js
from tests.ui.helpers import running_map

OLD_EDGE = "shop/client>shop/server:7000/TCP"


def _shown(driver: object, edge_id: str) -> bool:
    return edge_state(driver, edge_id) is not None


def test_time_window_hides_and_shows_older_edges(tmp_path: Path) -> None:
    pipeline = h.make_pipeline()
    ten_minutes_ago = time.monotonic_ns() - 600 * 1_000_000_000
    pipeline.on_events(
        [
            h.event(
                type=EventType.DROP,
                verdict=Verdict.DENIED,
                drop=DropReason.POLICY_DEFAULT_DENY,
                direction=Direction.INGRESS,
                dport=7000,
                ts_ns=ten_minutes_ago,
            ),
            *h.sample_events(),
        ]
    )
    with (
        h.serve(pipeline, tmp_path / "observer.sock") as served,
        running_map(served.target) as ui,
        headless_chromium() as driver,
    ):
        driver.get(ui.url)
        wait_js(driver, "return window.meshmap.state.edges.size >= 7")
        window = Select(driver.find_element("id", "window"))
        assert window.first_selected_option.text == "last 5 minutes"
        wait_js(driver, "return window.meshmap.cy.edges().length >= 6")
        assert not _shown(driver, OLD_EDGE)
        window.select_by_visible_text("last 15 minutes")
        wait_js(driver, "return !window.meshmap.cy.getElementById(arguments[0]).empty()", OLD_EDGE)
        assert edge_state(driver, OLD_EDGE)["classes"] == ["dropped"]  # type: ignore[index]
        window.select_by_visible_text("last minute")
        wait_js(driver, "return window.meshmap.cy.getElementById(arguments[0]).empty()", OLD_EDGE)
        assert _shown(driver, "shop/client>shop/server:80/TCP")
        # The flows table follows the same window: the old drop's row is gone, the recent ones stay.
        rows = texts(driver, "#flows tbody tr")
        assert rows and not [row for row in rows if ":7000)" in row]
        window.select_by_visible_text("all held (an hour)")
        wait_js(driver, "return !window.meshmap.cy.getElementById(arguments[0]).empty()", OLD_EDGE)
        rows = driver.find_elements("css selector", "#flows tbody tr")
        assert len(rows) == len(h.sample_events()) + 1


def test_unreachable_flow_server_is_shown_then_picked_up_without_reload(tmp_path: Path) -> None:
    sock = tmp_path / "later.sock"
    with running_map(f"unix://{sock}") as ui, headless_chromium() as driver:
        driver.get(ui.url)
        driver.execute_script("window.samePage = true;")
        wait_js(driver, "return document.getElementById('status').classList.contains('unreachable')")
        text = driver.find_element("id", "status").text
        assert "retrying in" in text and str(sock) in text
        pipeline = h.make_pipeline()
        pipeline.on_events(h.sample_events())
        with h.serve(pipeline, sock):
            wait_js(
                driver,
                "return document.getElementById('status').classList.contains('connected')",
                timeout=15,
            )
            wait_js(driver, "return window.meshmap.cy.edges().length >= 6")
            assert driver.execute_script("return window.samePage === true")
