"""Waiting for a condition in tests: the one helper, instead of a sleep that hopes the condition holds."""

from __future__ import annotations

import time
from collections.abc import Callable


def seconds_until(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01
) -> float | None:
    """Seconds until predicate() was true (checked every `interval`), or None if it was not within
    `timeout`; it is checked once more at the deadline, so a slow machine gets its last chance."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    return time.monotonic() - start if predicate() else None


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """True as soon as predicate() is true; False if it is still false after `timeout` seconds."""
    return seconds_until(predicate, timeout, interval) is not None
