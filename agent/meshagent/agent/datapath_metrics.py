"""Prometheus families for the datapath's own hardening state, read at scrape time: events suppressed by
each endpoint's event budget, endpoints held fail-closed, new TCP connections that overflowed into the
LRU conntrack table, and what the conntrack reaper's last pass cost."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meshagent.datapath.datapath import ConntrackScan

logger = logging.getLogger(__name__)


class DatapathReadings(Protocol):
    """What the collector reads (meshagent.datapath.datapath.Datapath has it)."""

    fail_closed: dict[int, str]
    last_ct_scan: ConntrackScan

    def suppressed_events(self) -> dict[int, int]: ...
    def ct_tcp_overflow(self) -> int: ...


class DatapathCollector(Collector):
    def __init__(self, datapath: DatapathReadings) -> None:
        self._datapath = datapath

    def collect(self) -> Iterable[Any]:
        dp = self._datapath
        try:
            suppressed = dp.suppressed_events()
            overflow = dp.ct_tcp_overflow()
        except Exception:  # a failing map read must not break the whole scrape
            logger.exception("reading datapath counters failed")
            return
        family = CounterMetricFamily(
            "meshagent_events_suppressed",
            "Events not sent because the endpoint exceeded its event budget (event_rate_per_endpoint)",
            labels=["ifindex"],
        )
        for ifindex, count in sorted(suppressed.items()):
            family.add_metric([str(ifindex)], count)
        yield family
        yield CounterMetricFamily(
            "meshagent_conntrack_tcp_overflow",
            "New TCP connections stored in the LRU conntrack table because ma_ct_tcp was full",
            value=overflow,
        )
        yield GaugeMetricFamily(
            "meshagent_endpoints_fail_closed",
            "Endpoints held isolated or entry-less because a map write failed",
            value=len(dp.fail_closed),
        )
        scan = dp.last_ct_scan
        yield GaugeMetricFamily(
            "meshagent_conntrack_scan_entries",
            "Conntrack entries read by the reaper's last pass",
            value=scan.entries,
        )
        yield GaugeMetricFamily(
            "meshagent_conntrack_scan_seconds",
            "Duration of the conntrack reaper's last pass",
            value=scan.seconds,
        )
