"""On every kernel of the matrix: the capability probes report what the agent relies on.

The matrix's kernels (Debian bookworm 6.1 and 6.12) have every feature probed, so each must come back
available; a probe that wrongly reports a gap would make the agent degrade for nothing.
"""

from __future__ import annotations

import os

import pytest
from meshagent.datapath import probes

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("feature", list(probes.Feature), ids=lambda f: f.value)
def test_feature_available_on_matrix_kernel(feature: probes.Feature) -> None:
    result = probes.probe(feature)
    assert result.feature is feature
    assert result.available, f"{feature.value} on {os.uname().release}: {result.reason}"
    assert result.reason == ""


def test_unknown_map_type_is_reported_as_unsupported() -> None:
    # A map type number far past any kernel's enum: the same code path that reports a real gap.
    result = probes._probe_map(probes.Feature.RING_BUFFER, 4000, key_size=4, value_size=4, max_entries=1)
    assert not result.available
    assert "not supported by kernel" in result.reason
    assert os.uname().release in result.reason
