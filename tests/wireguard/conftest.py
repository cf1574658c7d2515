"""The encryption worker's rig (tests/wireguard/rig.py) as a fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.wireguard.rig import Rig, make_rig


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)
