"""Shared pytest configuration: privileged tests are marked `kernel` and skipped cleanly without root."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for BPF and network namespaces")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)
