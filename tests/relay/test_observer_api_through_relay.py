"""The Observer API tests of one node (tests/observer/test_getflows.py), run unchanged against the relay
before that node: a Hubble client cannot tell the relay from an agent, but for the node status event
that the relay sends first in every GetFlows stream (as Hubble's relay does). The three tests that count
every response of a stream are left out for that reason; test_relay_api.py checks the same with the
status event counted."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.relay.peers import PeerSpec

from tests.observer import helpers as h
from tests.observer import test_getflows
from tests.relay.helpers import relay_for


@pytest.fixture
def served(tmp_path: Path) -> Iterator[h.Served]:
    """One node's server, and in front of it the relay; the tests talk to the relay's socket."""
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    with (
        h.serve(pipeline, node_dir / "observer.sock") as node,
        relay_for(tmp_path, [PeerSpec(node.target, "node-a")]) as (_relay, sock),
    ):
        yield h.Served(pipeline, node.service, node.server, sock)


COUNT_EVERY_RESPONSE = {
    "test_plain_generated_stub_reads_flows_with_node_name_and_time",
    "test_follow_without_number_streams_only_new_flows",
    "test_a_large_request_is_served",
}

# Every test of that module that is written against `served` (the others build servers of their own).
for _name, _test in inspect.getmembers(test_getflows, inspect.isfunction):
    if (
        _name.startswith("test_")
        and _name not in COUNT_EVERY_RESPONSE
        and "served" in inspect.signature(_test).parameters
    ):
        globals()[_name] = _test
