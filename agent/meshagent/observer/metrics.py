"""Prometheus metrics for flows, drops, policy verdicts, TCP flags, losses, map pressure and source sync.

Labels are bounded by construction (verdicts, drop reasons, protocols, flags, map and source names); per-pod
and per-IP labels are never used. Namespace labels are opt-in (`namespace_labels=True`).
"""

from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Info, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meshagent.model.events import DatapathEvent
from meshagent.observer.convert import PreparedFlow
from meshagent.observer.listen_address import make_server
from meshagent.observer.proto.flow import flow_pb2 as pb

logger = logging.getLogger(__name__)

_EVENT_TYPE = {1: "drop", 4: "trace", 5: "policy-verdict"}


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


@dataclass(frozen=True)
class FrontState:
    up: bool
    failed_starts: int  # restarts that failed (retried with backoff)
    broken_links: int  # times the front process sent what the agent could not read (killed, restarted)


class _FrontCollector(Collector):
    def __init__(self, state: Callable[[], FrontState]) -> None:
        self._state = state

    def collect(self) -> Iterable[Any]:
        s = self._state()
        up = GaugeMetricFamily(
            "meshagent_observer_front_up",
            "1 while the observer front process serves the flow API; 0 while it is being restarted",
        )
        up.add_metric([], 1.0 if s.up else 0.0)
        failed = CounterMetricFamily(
            "meshagent_observer_front_failed_starts",
            "Restarts of the observer front process that failed (each is retried after a longer delay)",
        )
        failed.add_metric([], s.failed_starts)
        broken = CounterMetricFamily(
            "meshagent_observer_front_broken_links",
            "Times the front process sent a control message the agent could not read (it was restarted)",
        )
        broken.add_metric([], s.broken_links)
        yield from (up, failed, broken)


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


# One hot-path counter key: (type, verdict, drop reason, protocol, direction, match, tcp flag bits).
_Key = tuple[str, str, str, str, str, str, int]
_FLAG_BITS = {
    "FIN": 0x01,
    "SYN": 0x02,
    "RST": 0x04,
    "PSH": 0x08,
    "ACK": 0x10,
    "URG": 0x20,
    "ECE": 0x40,
    "CWR": 0x80,
    "NS": 0x100,
}


class FlowMetrics:
    """Counts flows on the hot path in a plain dict (one increment per flow) and expands the counts into
    Prometheus families only when scraped: prometheus_client counters cost ~15 us per flow here.

    Feed it with `observe_prepared` (pipeline batch sink, cheapest), `observe_event` (event sink) or
    `observe` (any flow); `lost` is the pipeline's lost listener.
    """

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
        self._lock = threading.Lock()
        self._counts: dict[_Key, int] = {}
        self._ns_counts: dict[tuple[str, str, str], int] | None = {} if namespace_labels else None
        self._lost: dict[str, int] = {pb.LostEventSource.Name(s): 0 for s in pb.LostEventSource.values() if s}
        self._event_keys: dict[tuple[object, ...], _Key] = {}
        info = Info("meshagent_agent", "Agent build and node", registry=self.registry)
        info.info({"version": version, "node": node_name})
        self.registry.register(_FlowCollector(self))
        self.registry.register(_CallbackCollector(map_usage, source_sync))
        self._front_restarts = Counter(
            "meshagent_observer_front_restarts",
            "Times the observer front process died and was started again (the flow API was down meanwhile)",
            registry=self.registry,
        )

    def front_restarted(self) -> None:
        """FrontLink.on_restart: the observer front process was started again."""
        self._front_restarts.inc()

    def watch_front(self, state: Callable[[], FrontState]) -> None:
        """Exposes the front process's state (FrontLink: up, failed starts, broken links) when scraped."""
        self.registry.register(_FrontCollector(state))

    def _add(self, key: _Key) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def observe_event(self, ev: DatapathEvent, flow: pb.Flow) -> None:
        """Per-event path (pipeline event sink): `flow` is a full flow or the pipeline's template."""
        self._add(self._event_key(ev, flow))
        if self._ns_counts is not None:
            self._add_ns(flow)

    def _event_key(self, ev: DatapathEvent, flow: pb.Flow) -> _Key:
        """The labels of an event's flow, from a cache keyed by the event's plain fields (`flow`, a full
        flow or its template, is read only on a miss); TCP flags come from the event."""
        ek = (ev.type, ev.verdict, ev.drop_reason, ev.protocol, ev.direction, bool(ev.rule_id))
        base = self._event_keys.get(ek)
        if base is None:
            base = self._key_of(flow)
            if len(self._event_keys) < 4096:
                self._event_keys[ek] = base
        return (*base[:6], ev.tcp_flags if ev.protocol == 6 else 0)

    def observe_prepared(self, batch: Sequence[PreparedFlow]) -> None:
        """Batch path (pipeline batch sink, cheapest): flows of one template share every label but the
        TCP flags, so a batch is first counted by (template, flags) without a lock, then merged."""
        local: dict[tuple[object, int], list[Any]] = {}
        for p in batch:
            ev = p.event
            k = (p.shared, ev.tcp_flags)
            hit = local.get(k)
            if hit is None:
                local[k] = [ev, p.template, 1]
            else:
                hit[2] += 1
        for ev, template, n in local.values():
            key = self._event_key(ev, template)
            with self._lock:
                self._counts[key] = self._counts.get(key, 0) + n
            if self._ns_counts is not None:
                src, dst = template.source.namespace, template.destination.namespace
                k_ns = (src, dst, pb.Verdict.Name(template.verdict))
                with self._lock:
                    self._ns_counts[k_ns] = self._ns_counts.get(k_ns, 0) + n

    def observe(self, f: pb.Flow) -> None:
        self._add(self._key_of(f))
        if self._ns_counts is not None:
            self._add_ns(f)

    def _add_ns(self, f: pb.Flow) -> None:
        assert self._ns_counts is not None
        k = (f.source.namespace, f.destination.namespace, pb.Verdict.Name(f.verdict))
        with self._lock:
            self._ns_counts[k] = self._ns_counts.get(k, 0) + 1

    @staticmethod
    def _key_of(f: pb.Flow) -> _Key:
        verdict = pb.Verdict.Name(f.verdict)
        etype = _EVENT_TYPE.get(f.event_type.type, "unknown")
        reason = ""
        if f.verdict == pb.DROPPED:
            known = f.drop_reason_desc in pb.DropReason.values()
            reason = pb.DropReason.Name(f.drop_reason_desc) if known else "UNKNOWN"
        matched = bool(
            f.egress_allowed_by or f.ingress_allowed_by or f.egress_denied_by or f.ingress_denied_by
        )
        flags = 0
        if f.l4.WhichOneof("protocol") == "TCP":
            for name, bit in _FLAG_BITS.items():
                if getattr(f.l4.TCP.flags, name):
                    flags |= bit
        direction = pb.TrafficDirection.Name(f.traffic_direction).lower()
        return (etype, verdict, reason, _protocol(f), direction, "rule" if matched else "default", flags)

    def lost(self, source: int, count: int) -> None:
        known = source in pb.LostEventSource.values()
        name = pb.LostEventSource.Name(source) if known else "UNKNOWN_LOST_EVENT_SOURCE"
        with self._lock:
            self._lost[name] = self._lost.get(name, 0) + count

    def snapshot(self) -> tuple[dict[_Key, int], dict[tuple[str, str, str], int], dict[str, int]]:
        with self._lock:
            return dict(self._counts), dict(self._ns_counts or {}), dict(self._lost)


class _FlowCollector(Collector):
    def __init__(self, metrics: FlowMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterable[Any]:
        counts, ns_counts, lost = self._m.snapshot()
        flows: dict[tuple[str, ...], int] = {}
        drops: dict[tuple[str, ...], int] = {}
        policy: dict[tuple[str, ...], int] = {}
        tcp: dict[tuple[str, ...], int] = {}
        for (etype, verdict, reason, proto, direction, match, bits), n in counts.items():
            _bump(flows, (etype, verdict), n)
            if verdict == "DROPPED":
                _bump(drops, (reason, proto), n)
            if etype == "policy-verdict":
                _bump(policy, (direction, match, verdict.lower()), n)
            for name, bit in _FLAG_BITS.items():
                if bits & bit:
                    _bump(tcp, (name, "IPv4"), n)
        yield _family(
            "meshagent_flows_processed", "Flows by event type and verdict", ["type", "verdict"], flows
        )
        yield _family("meshagent_drop", "Dropped flows by reason and protocol", ["reason", "protocol"], drops)
        yield _family(
            "meshagent_policy_verdicts",
            "Policy verdicts by direction, match (rule or default) and action",
            ["direction", "match", "action"],
            policy,
        )
        yield _family("meshagent_tcp_flags", "TCP flags seen on flows", ["flag", "family"], tcp)
        yield _family(
            "meshagent_lost_events",
            "Events lost before reaching clients, by source",
            ["source"],
            {(k,): v for k, v in lost.items()},
        )
        if self._m._ns_counts is not None:
            yield _family(
                "meshagent_namespace_flows",
                "Flows by source and destination namespace and verdict",
                ["source_namespace", "destination_namespace", "verdict"],
                dict(ns_counts.items()),
            )


def _bump(d: dict[tuple[str, ...], int], key: tuple[str, ...], n: int) -> None:
    d[key] = d.get(key, 0) + n


def _family(
    name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], int]
) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(values.items()):
        fam.add_metric(list(key), n)
    return fam


class MetricsServer:
    """Serves a registry's exposition over HTTP on host:port (port 0 picks a free one)."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        self._server = make_server(_ThreadingWSGIServer, address, _QuietHandler, setting="metrics_listen")
        self._server.set_app(make_wsgi_app(registry))
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ma-metrics", daemon=True)
        self._thread.start()
        logger.info("metrics on %s port %d", self._server.server_address[0], self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """A scrape is answered on its own thread, so a slow scraper never holds up the next."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # every scrape would be a line
        return
