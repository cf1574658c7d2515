"""From a backend back to the Services that lead to it: what flows need for `destination_service`.

The socket load-balancer rewrites the destination before any packet exists, so the datapath's events
name the backend. The compiled entries know which frontends (and Services) send to each backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshagent.model.kernel_state import Protocol
from meshagent.model.services import Frontend, IPAddress, LBEntry, ObjectRef

BackendKey = tuple[IPAddress, int, Protocol]


@dataclass(frozen=True, order=True)
class ServiceVia:
    """A frontend that sends to a backend, and the Service it belongs to (None when not known)."""

    frontend: Frontend
    service: ObjectRef | None


def backend_index(entries: Mapping[Frontend, LBEntry]) -> dict[BackendKey, tuple[ServiceVia, ...]]:
    """(backend address, port, protocol) -> the frontends with that backend at a non-zero weight."""
    found: dict[BackendKey, set[ServiceVia]] = {}
    for entry in entries.values():
        for backend in entry.backends:
            if backend.weight > 0:
                key = (backend.address, backend.port, entry.frontend.protocol)
                found.setdefault(key, set()).add(ServiceVia(entry.frontend, entry.service))
    return {
        key: tuple(sorted(vias, key=lambda v: (v.frontend, v.service or ObjectRef("", ""))))
        for key, vias in found.items()
    }
