"""A real headless browser for the service map tests: Debian's chromium driven through its chromedriver
by selenium, with nothing downloaded at run time (both paths are given, so selenium's driver manager is
never asked)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots kept after the run (not in git)


@contextmanager
def headless_chromium() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make install does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="meshagent-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",  # we run as root
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_js(driver: Any, script: str, *args: Any, timeout: float = 10.0) -> Any:
    """Polls `script` (a JS function body returning a value) until it returns something truthy."""
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d: Any) -> Any:
        return d.execute_script(script, *args)

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(check)


def edge_state(driver: Any, edge_id: str) -> dict[str, Any] | None:
    """How the map draws an edge now (None: not drawn): its class and line colour and style."""
    result: dict[str, Any] | None = driver.execute_script(
        """
        const e = window.meshmap.cy.getElementById(arguments[0]);
        if (e.empty()) return null;
        return {classes: e.classes(), color: e.style('line-color'), style: e.style('line-style'),
                label: e.data('label'), source: e.source().id(), target: e.target().id()};
        """,
        edge_id,
    )
    return result


def shown_nodes(driver: Any) -> dict[str, str | None]:
    """The drawn nodes (not the namespace boxes), each with its parent (its namespace box)."""
    nodes: dict[str, str | None] = driver.execute_script(
        """
        const out = {};
        window.meshmap.cy.nodes().not('.ns').forEach((n) => { out[n.id()] = n.data('parent') || null; });
        return out;
        """
    )
    return nodes


def save_screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def texts(driver: Any, selector: str) -> list[str]:
    """The text of every element matching `selector`, read at one instant (the page redraws the table and
    the panel as flows arrive, so elements found earlier may be gone)."""
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText);", selector
    )
    return found


def page_errors(driver: Any) -> list[str]:
    """Errors the page's scripts raised since the last call (from the browser's console log)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_for_edges(driver: Any, expected: dict[str, str], timeout: float = 10.0) -> None:
    """Until every edge id in `expected` is on the map with its verdict class."""
    wait_js(
        driver,
        """
        const cy = window.meshmap.cy;
        return Object.entries(arguments[0]).every(([id, cls]) => {
          const e = cy.getElementById(id);
          return !e.empty() && e.hasClass(cls);
        });
        """,
        expected,
        timeout=timeout,
    )
