"""Reads saved flows (JSON lines: `hubble observe -o jsonpb`/`-o json` output or our export) into a ring."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from google.protobuf import json_format

from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.ring import FlowRing

logger = logging.getLogger(__name__)


class ReplayError(ValueError):
    pass


def parse_line(line: str, lineno: int) -> opb.GetFlowsResponse | None:
    """One JSON line into a GetFlowsResponse (a bare Flow is wrapped). Blank lines give None."""
    line = line.strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ReplayError(f"line {lineno}: not JSON: {err}") from err
    if not isinstance(obj, dict):
        raise ReplayError(f"line {lineno}: expected a JSON object")
    try:
        if "flow" in obj or "lost_events" in obj or "lostEvents" in obj or "node_status" in obj:
            return json_format.ParseDict(obj, opb.GetFlowsResponse(), ignore_unknown_fields=True)
        resp = opb.GetFlowsResponse()
        json_format.ParseDict(obj, resp.flow, ignore_unknown_fields=True)
        resp.node_name = resp.flow.node_name
        resp.time.CopyFrom(resp.flow.time)
        return resp
    except json_format.ParseError as err:
        raise ReplayError(f"line {lineno}: not a flow: {err}") from err


def load_ring(lines: Iterable[str]) -> FlowRing:
    """All flows and lost-event records of the input, in order, in a ring big enough to hold them."""
    items: list[opb.GetFlowsResponse] = []
    for n, line in enumerate(lines, 1):
        resp = parse_line(line, n)
        if resp is not None:
            items.append(resp)
    ring = FlowRing(max(1, len(items)))
    for resp in items:
        if resp.HasField("flow"):
            ring.push_flow(resp.flow.time.ToNanoseconds(), resp.flow)
        elif resp.HasField("lost_events"):
            ring.push_lost(resp.time.ToNanoseconds(), resp.lost_events)
    logger.debug("replay: loaded %d records", len(items))
    return ring
