"""Services into the socket load-balancer: store events (Service, EndpointSlice, TCPRoute, UDPRoute) ->
ServiceCatalog -> compiled frontends -> SocketLB maps, as a diff.

Its own thread, like the policy reconciler: a burst of events is taken whole and compiled once. Bad input
is rejected with its reason (log, Kubernetes Event) and the previous version of the object stays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Protocol

from meshagent.agent.enricher import ClusterEnricher
from meshagent.agent.subscription import StoreSubscription
from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import Direction, Verdict
from meshagent.model.services import ServiceTranslation
from meshagent.services.catalog import ServiceCatalog
from meshagent.services.lookup import backend_index
from meshagent.sources.events import Action, ObjectEvent, SyncEvent
from meshagent.sources.kinds import Kind
from meshagent.sources.store import ObjectStore

logger = logging.getLogger(__name__)

SERVICE_KINDS = (Kind.SERVICE, Kind.ENDPOINT_SLICE, Kind.TCP_ROUTE, Kind.UDP_ROUTE)


class FrontendWriter(Protocol):
    """What this needs of the socket load-balancer (meshagent.datapath.socklb.SocketLB)."""

    def apply(self, desired: Any) -> Any: ...


def translation_event(translation: ServiceTranslation) -> DatapathEvent:
    """A socket load-balancer decision as a datapath event, so it becomes a flow like any other: from the
    Service address to the chosen backend (TRANSLATED), or refused when the Service has no backend. The
    client's address is not known yet at connect() time: the unspecified address of the Service's family
    stands for it, so an IPv6 decision is an IPv6 flow."""
    frontend = translation.frontend
    backend = translation.backend
    daddr = backend[0] if backend is not None else frontend.address
    unknown_client = IPv4Address(0) if isinstance(daddr, IPv4Address) else IPv6Address(0)
    return DatapathEvent(
        timestamp_ns=translation.timestamp_ns,
        type=EventType.TRANSLATED,
        verdict=Verdict.ALLOWED if backend is not None else Verdict.DENIED,
        drop_reason=DropReason.NONE,
        direction=Direction.EGRESS,
        endpoint_id=0,
        ifindex=0,
        saddr=unknown_client,
        daddr=daddr,
        sport=0,
        dport=backend[1] if backend is not None else frontend.port,
        protocol=int(frontend.protocol),
        tcp_flags=0,
        is_reply=False,
        rule_id=0,
        src_identity=0,
        dst_identity=0,
    )


def translation_forwarder(on_event: Callable[[DatapathEvent], None]) -> Callable[[ServiceTranslation], None]:
    """A SocketLB.start_events callback handing every decision, of either family, to on_event."""

    def forward(translation: ServiceTranslation) -> None:
        on_event(translation_event(translation))

    return forward


class ServicesReconciler:
    def __init__(
        self,
        *,
        store: ObjectStore,
        socket_lb: FrontendWriter,
        enricher: ClusterEnricher,
        on_rejected: Callable[[dict[str, Any], str], None] = lambda obj, reason: None,
    ) -> None:
        self.store = store
        self.socket_lb = socket_lb
        self.enricher = enricher
        self.catalog = ServiceCatalog()
        self._on_rejected = on_rejected
        self._events = StoreSubscription(store, "ma-services")
        self._synced: set[Kind] = set()
        self.applied = threading.Event()
        self.frontends = 0
        self.errors: list[str] = []
        self.rejected: dict[tuple[str, str, str], str] = {}

    def start(self) -> None:
        self._events.start(self._run)

    def stop(self) -> None:
        self._events.stop()

    def _run(self) -> None:
        while True:
            batch = self._events.burst()
            if batch is None:
                return
            try:
                changed = sum(self._handle(event) for event in batch)
                if self._synced.issuperset(SERVICE_KINDS) and (changed or not self.applied.is_set()):
                    self._apply()
            except Exception:  # keep serving the last good frontends
                logger.exception("services step failed")

    def _handle(self, item: ObjectEvent | SyncEvent) -> bool:
        if isinstance(item, SyncEvent):
            if item.kind in SERVICE_KINDS:
                self._synced.add(item.kind)
            return False
        if item.kind not in SERVICE_KINDS:
            return False
        key = (item.kind.value, item.namespace or "", item.name)
        if item.action == Action.DELETED:
            self.rejected.pop(key, None)
            return self.catalog.delete(item.kind.value, item.namespace or "", item.name)
        error = self.catalog.upsert(item.kind.value, item.obj)
        if error is not None:
            if self.rejected.get(key) != str(error):
                self._on_rejected(item.obj, str(error))
            self.rejected[key] = str(error)
            return False
        self.rejected.pop(key, None)
        return True

    def _apply(self) -> None:
        compiled = self.catalog.compile()
        for warning in compiled.warnings:
            logger.warning("services: %s", warning)
        result = self.socket_lb.apply(compiled.entries)
        self.errors = list(getattr(result, "errors", []))[-20:]
        if self.errors:
            logger.error("socket load-balancer update incomplete: %s", "; ".join(self.errors[:3]))
        self.frontends = len(compiled.entries)
        self.enricher.set_services(backend_index(compiled.entries))
        if not self.applied.is_set():
            logger.info("services in the socket load-balancer: %d frontends", self.frontends)
        self.applied.set()
