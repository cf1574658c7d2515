"""Fixtures shared by the observer tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.observer import helpers as h

# Every test of the served API runs against both ways of serving it: from this process, and from the
# observer front process that the agent uses by default (observer/frontlink.py).
SERVING_MODES = {"in-process": False, "front-process": True}


@pytest.fixture(params=list(SERVING_MODES))
def serving_mode(request: pytest.FixtureRequest) -> bool:
    """front_process for ServerConfig."""
    return SERVING_MODES[request.param]


@pytest.fixture
def served(tmp_path: Path, serving_mode: bool) -> Iterator[h.Served]:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    with h.serve(pipeline, tmp_path / "observer.sock", front_process=serving_mode) as s:
        yield s


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Certificates for TLS tests (tests/observer/pki.py)."""
    from tests.observer.pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))
