"""Fixtures of the relay tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Certificates for TLS tests (tests/observer/pki.py)."""
    from tests.observer.pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))
