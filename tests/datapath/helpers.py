"""Small builders for datapath tests: kernel state from pods, and waiting for events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Network, IPv6Network

from meshagent.model.events import DatapathEvent
from meshagent.model.kernel_state import EndpointEntry, IPCacheEntry, KernelState, PolicyEntry
from meshagent.testing.topology import Pod

IDENTITY_BASE = 1000


def identity_of(pod: Pod) -> int:
    """Tests give each pod its own identity, derived from its address."""
    return IDENTITY_BASE + int(pod.ip) % 1000


def endpoint(pod: Pod, endpoint_id: int, **flags: bool) -> EndpointEntry:
    return EndpointEntry(
        ifindex=pod.ifindex,
        endpoint_id=endpoint_id,
        identity=identity_of(pod),
        ipv4=pod.ip,
        ipv6=pod.ipv6,
        **flags,
    )


def state(
    endpoints: Iterable[EndpointEntry], pods: Iterable[Pod], policy: Iterable[PolicyEntry] = ()
) -> KernelState:
    pods = list(pods)
    ipcache = {IPCacheEntry(IPv4Network(f"{p.ip}/32"), identity_of(p)) for p in pods}
    ipcache |= {
        IPCacheEntry(IPv6Network(f"{p.ipv6}/128"), identity_of(p)) for p in pods if p.ipv6 is not None
    }
    return KernelState(endpoints=frozenset(endpoints), ipcache=frozenset(ipcache), policy=frozenset(policy))


class EventLog:
    """Collects events from the reader thread; wait_for polls until a predicate matches."""

    def __init__(self) -> None:
        self._events: list[DatapathEvent] = []
        self._lock = threading.Lock()
        # Events are stamped with CLOCK_MONOTONIC; ignore what earlier tests left in the ring buffer.
        self._since_ns = time.monotonic_ns()

    def __call__(self, event: DatapathEvent) -> None:
        if event.timestamp_ns < self._since_ns:
            return
        with self._lock:
            self._events.append(event)

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    @property
    def events(self) -> list[DatapathEvent]:
        with self._lock:
            return list(self._events)

    def wait_for(
        self, predicate: Callable[[DatapathEvent], bool], *, timeout: float = 3.0
    ) -> list[DatapathEvent]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events if predicate(e)]
            if found:
                return found
            time.sleep(0.02)
        return []
