"""Prometheus metrics for flows, drops, policy verdicts, TCP flags, losses, map pressure and source sync.

Labels are bounded by construction (verdicts, drop reasons, protocols, flags, map and source names); per-pod
and per-IP labels are never used. Namespace labels are opt-in (`namespace_labels=True`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from meshagent.observer.proto.flow import flow_pb2 as pb

logger = logging.getLogger(__name__)

_EVENT_TYPE = {1: "drop", 4: "trace", 5: "policy-verdict"}
_TCP_FLAGS = ("SYN", "FIN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


@dataclass(frozen=True)
class MapUsage:
    """One BPF map's fill level, as the integrator's callback reports it."""

    name: str
    entries: int
    capacity: int


MapUsageCallback = Callable[[], Iterable[MapUsage]]
SourceSyncCallback = Callable[[], Mapping[str, bool]]  # source name -> synced


def _protocol(f: pb.Flow) -> str:
    return (f.l4.WhichOneof("protocol") or "unknown").lower()


class _CallbackCollector(Collector):
    def __init__(self, maps: MapUsageCallback | None, sources: SourceSyncCallback | None) -> None:
        self._maps = maps
        self._sources = sources

    def collect(self) -> Iterable[Any]:
        if self._maps is not None:
            entries = GaugeMetricFamily("meshagent_map_entries", "Entries in a BPF map", labels=["map"])
            capacity = GaugeMetricFamily(
                "meshagent_map_capacity", "Maximum entries of a BPF map", labels=["map"]
            )
            pressure = GaugeMetricFamily(
                "meshagent_map_pressure", "Fill ratio of a BPF map (0-1)", labels=["map"]
            )
            try:
                usages = list(self._maps())
            except Exception:  # a failing callback must not break the whole scrape
                logger.exception("map usage callback failed")
                usages = []
            for u in usages:
                entries.add_metric([u.name], u.entries)
                capacity.add_metric([u.name], u.capacity)
                pressure.add_metric([u.name], u.entries / u.capacity if u.capacity else 0.0)
            yield from (entries, capacity, pressure)
        if self._sources is not None:
            synced = GaugeMetricFamily(
                "meshagent_source_synced",
                "1 when a metadata source has completed its initial sync",
                labels=["source"],
            )
            try:
                states = dict(self._sources())
            except Exception:
                logger.exception("source sync callback failed")
                states = {}
            for name, ok in sorted(states.items()):
                synced.add_metric([name], 1.0 if ok else 0.0)
            yield synced


class FlowMetrics:
    """Register `observe` as a pipeline sink and `lost` as its lost listener."""

    def __init__(
        self,
        *,
        node_name: str,
        version: str,
        registry: CollectorRegistry | None = None,
        map_usage: MapUsageCallback | None = None,
        source_sync: SourceSyncCallback | None = None,
        namespace_labels: bool = False,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._flows = Counter(
            "meshagent_flows_processed", "Flows by event type and verdict", ["type", "verdict"], registry=r
        )
        self._drops = Counter(
            "meshagent_drop", "Dropped flows by reason and protocol", ["reason", "protocol"], registry=r
        )
        self._policy = Counter(
            "meshagent_policy_verdicts",
            "Policy verdicts by direction, match (rule or default) and action",
            ["direction", "match", "action"],
            registry=r,
        )
        self._tcp = Counter("meshagent_tcp_flags", "TCP flags seen on flows", ["flag", "family"], registry=r)
        self._lost = Counter(
            "meshagent_lost_events", "Events lost before reaching clients, by source", ["source"], registry=r
        )
        self._ns_flows = (
            Counter(
                "meshagent_namespace_flows",
                "Flows by source and destination namespace and verdict",
                ["source_namespace", "destination_namespace", "verdict"],
                registry=r,
            )
            if namespace_labels
            else None
        )
        info = Info("meshagent_agent", "Agent build and node", registry=r)
        info.info({"version": version, "node": node_name})
        for source in pb.LostEventSource.values():
            if source:
                self._lost.labels(pb.LostEventSource.Name(source)).inc(0)  # visible from the first scrape
        r.register(_CallbackCollector(map_usage, source_sync))
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def _child(self, counter: Counter, *labels: str) -> Any:
        key = (counter._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = counter.labels(*labels)
            self._children[key] = child
        return child

    def observe(self, f: pb.Flow) -> None:
        verdict = pb.Verdict.Name(f.verdict)
        etype = _EVENT_TYPE.get(f.event_type.type, "unknown")
        self._child(self._flows, etype, verdict).inc()
        if f.verdict == pb.DROPPED:
            reason = (
                pb.DropReason.Name(f.drop_reason_desc)
                if f.drop_reason_desc in pb.DropReason.values()
                else "UNKNOWN"
            )
            self._child(self._drops, reason, _protocol(f)).inc()
        if f.event_type.type == 5:
            direction = pb.TrafficDirection.Name(f.traffic_direction).lower()
            matched = bool(
                f.egress_allowed_by or f.ingress_allowed_by or f.egress_denied_by or f.ingress_denied_by
            )
            self._child(self._policy, direction, "rule" if matched else "default", verdict.lower()).inc()
        if f.l4.WhichOneof("protocol") == "TCP":
            flags = f.l4.TCP.flags
            for name in _TCP_FLAGS:
                if getattr(flags, name):
                    self._child(self._tcp, name, "IPv4").inc()
        if self._ns_flows is not None:
            self._child(self._ns_flows, f.source.namespace, f.destination.namespace, verdict).inc()

    def lost(self, source: int, count: int) -> None:
        name = (
            pb.LostEventSource.Name(source)
            if source in pb.LostEventSource.values()
            else "UNKNOWN_LOST_EVENT_SOURCE"
        )
        self._child(self._lost, name).inc(count)


class MetricsServer:
    """Serves a registry's exposition over HTTP on host:port (port 0 picks a free one)."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"metrics address must be host:port, got {address!r}")
        self._server, self._thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
        self.port: int = self._server.server_address[1]
        logger.info("metrics on %s:%d", host or "0.0.0.0", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
