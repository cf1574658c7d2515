"""Prometheus view of a source's status: connected, last sync, relists, reconnects, objects.

The observer's metrics module already exports `meshagent_source_synced`; this collector adds
the health of the connection, so "enforcing the last known state while the API server is
unreachable" is visible on a dashboard. Names use the `meshagent_source_` prefix; labels are
bounded (source name and kind).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meshagent.sources.status import SourceStatus

logger = logging.getLogger(__name__)


class SourceStatusCollector(Collector):
    """Register with `registry.register(SourceStatusCollector(source.status))`."""

    def __init__(self, status: Callable[[], SourceStatus]) -> None:
        self._status = status

    def collect(self) -> Iterable[Any]:
        try:
            status = self._status()
        except Exception:  # a scrape must not fail because the source is in trouble
            logger.exception("reading the source status failed")
            return
        src = status.source
        connected = GaugeMetricFamily(
            "meshagent_source_connected",
            "1 while the source is reachable; 0 = the agent enforces the last known state",
            labels=["source", "kind"],
        )
        last_sync = GaugeMetricFamily(
            "meshagent_source_last_sync_timestamp_seconds",
            "Unix time of the last full read",
            labels=["source", "kind"],
        )
        objects = GaugeMetricFamily("meshagent_source_objects", "Objects known", labels=["source", "kind"])
        relists = CounterMetricFamily(
            "meshagent_source_relists",
            "Full lists after the first (410 Gone, resync)",
            labels=["source", "kind"],
        )
        reconnects = CounterMetricFamily(
            "meshagent_source_reconnects", "Watch streams restarted after an error", labels=["source", "kind"]
        )
        connected.add_metric([src, ""], 1.0 if status.connected else 0.0)
        if status.last_sync is not None:
            last_sync.add_metric([src, ""], status.last_sync)
        for kind in status.kinds:
            connected.add_metric([src, kind.kind], 1.0 if kind.connected else 0.0)
            if kind.last_sync is not None:
                last_sync.add_metric([src, kind.kind], kind.last_sync)
            objects.add_metric([src, kind.kind], float(kind.objects))
            relists.add_metric([src, kind.kind], float(kind.relists))
            reconnects.add_metric([src, kind.kind], float(kind.reconnects))
        ready = GaugeMetricFamily(
            "meshagent_source_ready", "1 once every kind had its first full read", labels=["source"]
        )
        ready.add_metric([src], 1.0 if status.ready else 0.0)
        errors = GaugeMetricFamily(
            "meshagent_source_manifest_problems", "Current problems in manifest files", labels=["source"]
        )
        errors.add_metric([src], float(len(status.errors)))
        yield from (connected, last_sync, objects, relists, reconnects, ready, errors)
