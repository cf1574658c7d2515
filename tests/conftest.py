"""Shared pytest configuration: privileged tests are marked `kernel`. Without root they are skipped
cleanly on a developer's machine; under CI (CI=true) a skipped kernel test, for want of root or of a
kernel feature, fails instead, so a green CI run means the kernel tests really ran."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

KERNEL = "kernel"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for BPF and network namespaces")
    for item in items:
        if KERNEL in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and not hasattr(report, "wasxfail") and KERNEL in item.keywords and under_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"a kernel test may not be skipped under CI (CI={os.environ.get('CI')}): {reason}"
