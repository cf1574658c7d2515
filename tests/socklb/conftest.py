"""Fixtures for the socket load-balancer tests: one loaded SocketLB per session attached to a cgroup of
our own (never the pods' or the machine's), maps pinned under a per-run directory; both removed at the
end. A fresh set of pods per test in the session's node namespace."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.datapath.socklb import SocketLB, cgroup2_mount
from meshagent.testing.topology import Topology


@pytest.fixture(scope="session")
def lb_pin_dir() -> Iterator[Path]:
    path = Path("/sys/fs/bpf") / f"meshagent-lbtest-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        if path.exists():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()


def _remove_cgroup(path: Path) -> None:
    # A cgroup can only be removed once empty: end whatever a failed test left running in it.
    for pid in (path / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    for _ in range(100):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"cannot remove cgroup {path}")


@pytest.fixture(scope="session")
def lb_cgroup() -> Iterator[Path]:
    path = cgroup2_mount() / f"meshagent-lbtest-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        _remove_cgroup(path)


@pytest.fixture(scope="session")
def socklb(lb_pin_dir: Path, lb_cgroup: Path) -> Iterator[SocketLB]:
    lb = SocketLB(pin_dir=lb_pin_dir, cgroup=lb_cgroup)
    lb.load()
    try:
        lb.attach()
        yield lb
    finally:
        lb.uninstall()


@pytest.fixture(scope="session")
def lb_node() -> Iterator[Topology]:
    with Topology() as topology:
        yield topology


@pytest.fixture
def lb_topo(lb_node: Topology, socklb: SocketLB) -> Iterator[Topology]:
    try:
        yield lb_node
    finally:
        socklb.apply({})
        for name in list(lb_node.pods):
            lb_node.remove_pod(name)
