"""Fixtures shared by the observer tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.observer import helpers as h


@pytest.fixture
def served(tmp_path: Path) -> Iterator[h.Served]:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    with h.serve(pipeline, tmp_path / "observer.sock") as s:
        yield s
