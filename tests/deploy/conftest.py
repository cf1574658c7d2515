"""The image tests run the built image (`make image-test` builds it and asks for them); elsewhere they are
deselected, so `make test` neither needs container tools nor runs a stale image. Deselected, not skipped:
under CI a skipped kernel test is a failure, and this one is not skipped for want of a kernel feature but
because another target runs it."""

from __future__ import annotations

import os

import pytest

IMAGE_TEST_ENV = "MESHAGENT_IMAGE_TEST"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "image: runs the built OCI image under podman (make image-test)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(IMAGE_TEST_ENV) == "1":
        return
    image_tests = [item for item in items if item.get_closest_marker("image") is not None]
    if image_tests:
        config.hook.pytest_deselected(items=image_tests)
        items[:] = [item for item in items if item.get_closest_marker("image") is None]
