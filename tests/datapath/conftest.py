"""Fixtures for the privileged datapath tests: one compiled datapath per session, pinned under a per-run
directory (never the production path) and removed at the end; a fresh topology per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.datapath.datapath import Datapath
from meshagent.model.kernel_state import KernelState
from meshagent.testing.topology import Topology

from tests.datapath.helpers import EventLog


@pytest.fixture(scope="session")
def pin_dir() -> Iterator[Path]:
    path = Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}"
    yield path


@pytest.fixture(scope="session")
def node() -> Iterator[Topology]:
    """The node namespace lives for the session, because the datapath attaches inside it."""
    with Topology() as topology:
        yield topology


@pytest.fixture(scope="session")
def datapath(pin_dir: Path, node: Topology) -> Iterator[Datapath]:
    dp = Datapath(pin_dir=pin_dir, netns=node.node)
    dp.load()
    try:
        yield dp
    finally:
        dp.apply(KernelState())
        dp.uninstall()


@pytest.fixture
def topo(node: Topology, datapath: Datapath) -> Iterator[Topology]:
    """The session's node, emptied of pods, state and connections after each test."""
    try:
        yield node
    finally:
        datapath.apply(KernelState())
        datapath.flush_conntrack()
        for name in list(node.pods):
            node.remove_pod(name)


@pytest.fixture
def events(datapath: Datapath) -> Iterator[EventLog]:
    log = EventLog()
    datapath.start_events(log)
    try:
        yield log
    finally:
        datapath.stop_events()
