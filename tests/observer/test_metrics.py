"""Prometheus exposition over real HTTP, parsed with prometheus_client's parser; values match the flows."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from meshagent.observer.metrics import FlowMetrics, MapUsage, MetricsServer
from meshagent.observer.proto.flow import flow_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

from tests.observer import helpers as h


@pytest.fixture(scope="module")
def scrape() -> Iterator[dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    pipeline = h.make_pipeline()
    metrics = FlowMetrics(
        node_name="node-a",
        version="9.9",
        map_usage=lambda: [MapUsage("ma_ct", 250, 1000), MapUsage("ma_policy", 0, 0)],
        source_sync=lambda: {"kubernetes": True, "directory": False},
    )
    pipeline.add_event_sink(metrics.observe_event)  # the hot path the agent uses
    pipeline.add_lost_listener(metrics.lost)
    pipeline.on_events(h.sample_events())
    pipeline.record_lost(pb.PERF_EVENT_RING_BUFFER, 7)
    server = MetricsServer(metrics.registry, "127.0.0.1:0")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    yield samples


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_flows_by_type_and_verdict(scrape: dict) -> None:  # type: ignore[type-arg]
    assert value(scrape, "meshagent_flows_processed_total", type="policy-verdict", verdict="FORWARDED") == 6
    assert value(scrape, "meshagent_flows_processed_total", type="policy-verdict", verdict="AUDIT") == 1
    assert value(scrape, "meshagent_flows_processed_total", type="drop", verdict="DROPPED") == 2
    assert value(scrape, "meshagent_flows_processed_total", type="trace", verdict="FORWARDED") == 1


def test_drops_by_reason_and_protocol(scrape: dict) -> None:  # type: ignore[type-arg]
    assert value(scrape, "meshagent_drop_total", reason="POLICY_DENY", protocol="tcp") == 1
    assert value(scrape, "meshagent_drop_total", reason="POLICY_DENIED", protocol="tcp") == 1


def test_policy_verdicts_by_direction_and_match(scrape: dict) -> None:  # type: ignore[type-arg]
    assert (
        value(scrape, "meshagent_policy_verdicts_total", direction="egress", match="rule", action="forwarded")
        == 1
    )
    assert (
        value(
            scrape, "meshagent_policy_verdicts_total", direction="ingress", match="rule", action="forwarded"
        )
        == 1
    )
    assert (
        value(scrape, "meshagent_policy_verdicts_total", direction="egress", match="rule", action="audit")
        == 1
    )
    assert (
        value(
            scrape, "meshagent_policy_verdicts_total", direction="egress", match="default", action="forwarded"
        )
        == 4
    )


def test_tcp_flags(scrape: dict) -> None:  # type: ignore[type-arg]
    assert value(scrape, "meshagent_tcp_flags_total", flag="SYN", family="IPv4") == 7
    assert value(scrape, "meshagent_tcp_flags_total", flag="ACK", family="IPv4") == 1


def test_lost_events_by_source(scrape: dict) -> None:  # type: ignore[type-arg]
    assert value(scrape, "meshagent_lost_events_total", source="PERF_EVENT_RING_BUFFER") == 7
    assert ("meshagent_lost_events_total", (("source", "HUBBLE_RING_BUFFER"),)) in scrape  # present at 0


def test_map_pressure_source_sync_and_info(scrape: dict) -> None:  # type: ignore[type-arg]
    assert value(scrape, "meshagent_map_entries", map="ma_ct") == 250
    assert value(scrape, "meshagent_map_capacity", map="ma_ct") == 1000
    assert value(scrape, "meshagent_map_pressure", map="ma_ct") == 0.25
    assert value(scrape, "meshagent_map_pressure", map="ma_policy") == 0
    assert value(scrape, "meshagent_source_synced", source="kubernetes") == 1
    assert ("meshagent_source_synced", (("source", "directory"),)) in scrape
    assert value(scrape, "meshagent_source_synced", source="directory") == 0
    assert value(scrape, "meshagent_agent_info", version="9.9", node="node-a") == 1


def test_no_per_pod_or_ip_labels(scrape: dict) -> None:  # type: ignore[type-arg]
    label_names = {k for _, labels in scrape for k, _ in labels}
    assert not label_names & {"pod", "ip", "source_ip", "destination_ip", "source_pod", "destination_pod"}


@pytest.mark.parametrize("namespace_labels", [False, True])
def test_flow_event_and_batch_paths_count_the_same(namespace_labels: bool) -> None:
    by_event = FlowMetrics(node_name="n", version="v", namespace_labels=namespace_labels)
    by_flow = FlowMetrics(node_name="n", version="v", namespace_labels=namespace_labels)
    by_batch = FlowMetrics(node_name="n", version="v", namespace_labels=namespace_labels)
    pipeline = h.make_pipeline()
    pipeline.add_event_sink(by_event.observe_event)
    pipeline.add_sink(by_flow.observe)
    pipeline.add_batch_sink(by_batch.observe_prepared)
    for _ in range(3):
        pipeline.on_events(h.sample_events())
    for ev in h.sample_events():
        pipeline.on_event(ev)
    counts, _, _ = by_batch.snapshot()
    assert sum(counts.values()) == 4 * len(h.sample_events())
    assert by_event.snapshot() == by_flow.snapshot() == by_batch.snapshot()
