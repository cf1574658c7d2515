"""The image tests run the built image (`make image-test` builds it and asks for them); elsewhere they are
skipped, so `make test` neither needs container tools nor runs a stale image."""

from __future__ import annotations

import os

import pytest

IMAGE_TEST_ENV = "MESHAGENT_IMAGE_TEST"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "image: runs the built OCI image under podman (make image-test)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(IMAGE_TEST_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"runs the built image: make image-test (sets {IMAGE_TEST_ENV}=1)")
    for item in items:
        if item.get_closest_marker("image") is not None:
            item.add_marker(skip)
