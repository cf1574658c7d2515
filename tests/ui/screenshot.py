"""Saves a screenshot of a running service map (how docs/images/service-map.png was made, from `make
demo KEEP=1`): `python -m tests.ui.screenshot URL OUT.png [--edge EDGE_ID]` opens the edge's panel first."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tests.ui.browser import headless_chromium, wait_js


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--edge", help="open this edge's panel (e.g. 'default/stray>shop/cart:8080/TCP')")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds for layout and live updates")
    args = parser.parse_args()
    with headless_chromium() as driver:
        driver.get(args.url)
        wait_js(driver, "return window.meshmap.cy.edges().length > 0", timeout=30)
        time.sleep(args.settle)
        driver.execute_script("window.meshmap.cy.fit(undefined, 30)")
        if args.edge:
            driver.execute_script("window.meshmap.cy.getElementById(arguments[0]).emit('tap')", args.edge)
            wait_js(driver, "return document.querySelector('#panel .why') !== null")
            time.sleep(0.5)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
