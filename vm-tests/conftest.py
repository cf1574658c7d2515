"""Fixtures for the kernel matrix's own tests (vm-tests/), run inside each guest by vm-tests/guest.sh.

Shared behaviour comes from tests/ (imported, not copied): the root-only skip of `kernel` tests. The
guest runs `pytest tests/datapath vm-tests` from the repository root, which puts the root on sys.path.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from vmnet import VethPair, veth_pair_in_netns

from tests.conftest import pytest_collection_modifyitems  # noqa: F401  (re-exported hook: skip without root)


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    with veth_pair_in_netns() as pair:
        yield pair
