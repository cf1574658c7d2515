"""JSON-lines export: filter, size-based rotation, losses written down, lines replayable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from meshagent.cli.replay import load_ring
from meshagent.observer.export import ExportConfig, FlowExporter
from meshagent.observer.filters import FilterError
from meshagent.observer.proto.flow import flow_pb2 as pb

from tests.observer import helpers as h


def test_export_filters_and_rotates(tmp_path: Path) -> None:
    pipeline = h.make_pipeline()
    path = tmp_path / "flows.json"
    cfg = ExportConfig(
        path=path, max_bytes=4096, max_backups=2, blacklist=[pb.FlowFilter(verdict=[pb.AUDIT])]
    )
    exporter = FlowExporter(pipeline.ring, cfg, node_name="node-a")
    exporter.start()
    for _ in range(10):
        pipeline.on_events(h.sample_events())
    exporter.stop()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["flows.json", "flows.json.1", "flows.json.2"]  # older ones dropped
    for f in files:
        assert f.stat().st_size <= 4096
        for line in f.read_text().splitlines():
            obj = json.loads(line)
            assert obj["flow"]["verdict"] != "AUDIT"
            assert obj["nodeName"] == "node-a"
    assert exporter.exported == 90  # 10 x 9 non-audit flows
    assert exporter.write_errors == 0
    # what was exported replays as flows
    ring = load_ring(path.read_text().splitlines())
    assert len(ring) == len(path.read_text().splitlines())


def test_export_writes_down_its_own_losses(tmp_path: Path) -> None:
    pipeline = h.make_pipeline(capacity=16)
    exporter = FlowExporter(pipeline.ring, ExportConfig(path=tmp_path / "f.json", max_bytes=10_000_000))
    # not started: the ring overflows under it before it reads
    for _ in range(10):
        pipeline.on_events(h.sample_events())
    exporter.start()
    exporter.stop()
    lines = [json.loads(x) for x in (tmp_path / "f.json").read_text().splitlines()]
    assert lines[0]["lostEvents"]["source"] == "HUBBLE_RING_BUFFER"
    assert int(lines[0]["lostEvents"]["numEventsLost"]) == 100 - 16
    assert sum(1 for x in lines if "flow" in x) == 16
    assert exporter.lost == 84


def test_export_rejects_bad_filter_and_config(tmp_path: Path) -> None:
    with pytest.raises(FilterError):
        FlowExporter(
            h.make_pipeline().ring,
            ExportConfig(path=tmp_path / "x", whitelist=[pb.FlowFilter(source_ip=["x"])]),
        )
    with pytest.raises(ValueError, match="max_bytes"):
        ExportConfig(path=tmp_path / "x", max_bytes=10)
