"""Fixtures for the privileged datapath tests: one compiled datapath per session, pinned under a per-run
directory (never the production path) and removed at the end; a fresh topology per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshagent.model.kernel_state import KernelState

if os.geteuid() == 0:
    from meshagent.datapath.datapath import Datapath
    from meshagent.testing.topology import Topology


@pytest.fixture(scope="session")
def pin_dir() -> Iterator[Path]:
    path = Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}"
    yield path


@pytest.fixture(scope="session")
def node() -> Iterator["Topology"]:
    """The node namespace lives for the session, because the datapath attaches inside it."""
    with Topology() as topology:
        yield topology


@pytest.fixture(scope="session")
def datapath(pin_dir: Path, node: "Topology") -> Iterator["Datapath"]:
    dp = Datapath(pin_dir=pin_dir, netns=node.node)
    dp.load()
    try:
        yield dp
    finally:
        dp.apply(KernelState())
        dp.uninstall()


@pytest.fixture
def topo(node: "Topology", datapath: "Datapath") -> Iterator["Topology"]:
    """The session's node, emptied of pods, state and connections after each test."""
    try:
        yield node
    finally:
        datapath.apply(KernelState())
        datapath.flush_conntrack()
        for name in list(node.pods):
            node.remove_pod(name)
