"""Prometheus families about the agent's own work: objects rejected (bad input is reported, never
silently dropped), kernel updates, endpoints by state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meshagent.agent.reconciler import Reconciler


class ReconcilerCollector(Collector):
    def __init__(self, reconciler: Reconciler, *, stale_at_start: Callable[[], int] = lambda: 0) -> None:
        self._reconciler = reconciler
        self._stale_at_start = stale_at_start

    def collect(self) -> Iterable[Any]:
        rec = self._reconciler
        rejected_total = CounterMetricFamily(
            "meshagent_objects_rejected", "Objects rejected as invalid since start (each new reason counts)"
        )
        rejected_total.add_metric([], rec.rejected_total)
        yield rejected_total
        rejected_now = GaugeMetricFamily(
            "meshagent_objects_rejected_current", "Objects currently rejected, by kind", labels=["kind"]
        )
        for kind, count in Counter(r.kind for r in list(rec.rejections.values())).items():
            rejected_now.add_metric([kind], count)
        yield rejected_now
        changes = CounterMetricFamily("meshagent_kernel_updates", "Changes applied to the kernel maps")
        changes.add_metric([], rec.changes_applied)
        yield changes
        errors = GaugeMetricFamily("meshagent_kernel_update_errors", "Errors left by the last kernel updates")
        errors.add_metric([], len(rec.apply_errors))
        yield errors
        last = GaugeMetricFamily("meshagent_kernel_update_seconds", "Duration of the last kernel update")
        last.add_metric([], rec.last_apply_seconds)
        yield last
        ready = GaugeMetricFamily("meshagent_ready", "1 when the first full sync is in the kernel")
        ready.add_metric([], 1.0 if rec.applied.is_set() else 0.0)
        yield ready
        endpoints = GaugeMetricFamily("meshagent_endpoints", "Local endpoints by state", labels=["state"])
        states = Counter(state.split(" ")[0].rstrip(":") for state in rec.endpoint_states().values())
        for state in ("ready", "found", "waiting", "attach"):
            endpoints.add_metric(["attach_failed" if state == "attach" else state], states.get(state, 0))
        yield endpoints
        attach_failures = CounterMetricFamily(
            "meshagent_endpoint_attach_failures",
            "Failed attempts to attach the programs to a local endpoint's interface (each is retried)",
        )
        attach_failures.add_metric([], rec.attach_retries.failed_attempts)
        yield attach_failures
        stale = GaugeMetricFamily(
            "meshagent_endpoints_stale_at_start",
            "Pinned endpoints not adopted at start because their interface was gone or another's",
        )
        stale.add_metric([], self._stale_at_start())
        yield stale
