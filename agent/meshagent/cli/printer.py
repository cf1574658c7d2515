"""Prints flows for people and tools: compact | dict | json | jsonpb | table. Knows nothing of transport."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from google.protobuf import json_format

from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb

OUTPUT_MODES = ("compact", "dict", "json", "jsonpb", "table")

_GREEN, _RED, _YELLOW, _BLUE, _RESET = "\033[32m", "\033[31m", "\033[33m", "\033[34m", "\033[0m"
_VERDICT_COLOUR = {
    pb.FORWARDED: _GREEN,
    pb.DROPPED: _RED,
    pb.AUDIT: _YELLOW,
    pb.ERROR: _RED,
    pb.TRANSLATED: _BLUE,
}
_OBS_POINT = {
    pb.FROM_ENDPOINT: "from-endpoint",
    pb.TO_ENDPOINT: "to-endpoint",
    pb.TO_STACK: "to-stack",
    pb.FROM_STACK: "from-stack",
    pb.TO_HOST: "to-host",
    pb.FROM_HOST: "from-host",
    pb.FROM_NETWORK: "from-network",
    pb.TO_NETWORK: "to-network",
}
_EVENT_TYPE = {1: "drop", 4: "trace", 5: "policy-verdict"}


def flow_time(f: pb.Flow) -> str:
    dt = datetime.fromtimestamp(f.time.seconds + f.time.nanos / 1e9, tz=UTC)
    return dt.strftime("%b %d %H:%M:%S.") + f"{f.time.nanos // 1000:06d}"


def _ports(f: pb.Flow) -> tuple[int | None, int | None]:
    kind = f.l4.WhichOneof("protocol")
    if kind in ("TCP", "UDP", "SCTP"):
        l4 = getattr(f.l4, kind)
        return l4.source_port, l4.destination_port
    return None, None


def endpoint_text(ep: pb.Endpoint, ip: str, port: int | None, service: pb.Service | None = None) -> str:
    if ep.pod_name:
        name = f"{ep.namespace}/{ep.pod_name}"
    elif service is not None and service.name:
        name = f"{service.namespace}/{service.name}"
    elif ":" in ip and port:
        name = f"[{ip}]"  # an IPv6 address: brackets keep its colons apart from the port's
    else:
        name = ip
    if port:
        name += f":{port}"
    if not ep.pod_name and ep.labels and any(lb.startswith("reserved:") for lb in ep.labels):
        name += " (" + ",".join(lb.partition(":")[2] for lb in ep.labels if lb.startswith("reserved:")) + ")"
    elif ep.identity:
        name += f" (ID:{ep.identity})"
    return name


def verdict_name(f: pb.Flow) -> str:
    return pb.Verdict.Name(f.verdict)


def drop_text(f: pb.Flow) -> str:
    if f.verdict != pb.DROPPED:
        return ""
    return pb.DropReason.Name(f.drop_reason_desc) if f.drop_reason_desc in pb.DropReason.values() else ""


def policy_names(f: pb.Flow) -> str:
    parts = []
    for label, pols in (
        ("egress allowed by", f.egress_allowed_by),
        ("ingress allowed by", f.ingress_allowed_by),
        ("egress denied by", f.egress_denied_by),
        ("ingress denied by", f.ingress_denied_by),
    ):
        if pols:
            names = ", ".join(f"{p.kind}:{p.namespace + '/' if p.namespace else ''}{p.name}" for p in pols)
            parts.append(f"{label} {names}")
    return "; ".join(parts)


class FlowPrinter:
    def __init__(
        self,
        out: TextIO,
        *,
        mode: str = "compact",
        colour: bool = False,
        policy_names: bool = False,
        node_names: bool = False,
    ) -> None:
        if mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output mode {mode!r} (one of {', '.join(OUTPUT_MODES)})")
        self._out = out
        self._mode = mode
        self._colour = colour
        self._policy_names = policy_names
        self._node_names = node_names
        self._table_header_done = False
        self._dict_count = 0

    def _c(self, colour: str, text: str) -> str:
        return f"{colour}{text}{_RESET}" if self._colour else text

    def response(self, resp: opb.GetFlowsResponse) -> None:
        kind = resp.WhichOneof("response_types")
        if self._mode == "jsonpb":
            self._out.write(json_format.MessageToJson(resp, indent=None) + "\n")
        elif kind == "flow":
            self.flow(resp.flow)
        elif kind == "lost_events":
            self.lost(resp.lost_events)
        self._out.flush()

    def flow(self, f: pb.Flow) -> None:
        getattr(self, f"_{self._mode}")(f)

    def lost(self, ev: pb.LostEvent) -> None:
        if self._mode in ("json", "jsonpb"):
            self._out.write(json.dumps({"lost_events": json_format.MessageToDict(ev)}) + "\n")
            return
        src = pb.LostEventSource.Name(ev.source)
        self._out.write(self._c(_YELLOW, f"EVENTS LOST: {src} lost {ev.num_events_lost} event(s)") + "\n")

    # -- modes --------------------------------------------------------------------------------------------
    def _compact(self, f: pb.Flow) -> None:
        sport, dport = _ports(f)
        src = endpoint_text(
            f.source, f.IP.source, sport, f.source_service if f.HasField("source_service") else None
        )
        dst = endpoint_text(
            f.destination,
            f.IP.destination,
            dport,
            f.destination_service if f.HasField("destination_service") else None,
        )
        arrow = "<-" if f.is_reply.value else "->"
        if f.is_reply.value:
            src, dst = dst, src
        point = _OBS_POINT.get(f.trace_observation_point, "")
        kind = _EVENT_TYPE.get(f.event_type.type, "")
        verdict = verdict_name(f)
        drop = drop_text(f)
        line = [flow_time(f)]
        if self._node_names:
            line.append(f"[{f.node_name}]")
        line.append(f"{src} {arrow} {dst}")
        if kind == "policy-verdict":
            line.append(f"policy-verdict:{pb.TrafficDirection.Name(f.traffic_direction)}")
        elif point:
            line.append(point)
        if drop:
            line.append(drop)
        line.append(self._c(_VERDICT_COLOUR.get(f.verdict, ""), verdict))
        line.append(f"({f.Summary})")
        if self._policy_names:
            names = policy_names(f)
            if names:
                line.append(f"[{names}]")
        self._out.write(" ".join(line) + "\n")

    def _dict(self, f: pb.Flow) -> None:
        if self._dict_count:
            self._out.write("------------\n")
        self._dict_count += 1
        sport, dport = _ports(f)
        rows = [
            ("TIMESTAMP", flow_time(f)),
            ("SOURCE", endpoint_text(f.source, f.IP.source, sport)),
            ("DESTINATION", endpoint_text(f.destination, f.IP.destination, dport)),
            ("TYPE", _EVENT_TYPE.get(f.event_type.type, str(f.event_type.type))),
            ("VERDICT", self._c(_VERDICT_COLOUR.get(f.verdict, ""), verdict_name(f))),
            ("SUMMARY", f.Summary),
        ]
        if drop_text(f):
            rows.insert(5, ("DROP REASON", drop_text(f)))
        rows.insert(1, ("NODE", f.node_name))
        if self._policy_names and policy_names(f):
            rows.append(("POLICIES", policy_names(f)))
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            self._out.write(f"{k.rjust(width)}: {v}\n")

    def _json(self, f: pb.Flow) -> None:
        self._out.write(json_format.MessageToJson(f, indent=None) + "\n")

    def _jsonpb(self, f: pb.Flow) -> None:
        resp = opb.GetFlowsResponse(flow=f, node_name=f.node_name, time=f.time)
        self._out.write(json_format.MessageToJson(resp, indent=None) + "\n")

    _TABLE_COLS = (("TIMESTAMP", 22), ("SOURCE", 34), ("DESTINATION", 34), ("TYPE", 15), ("VERDICT", 10))

    def _table(self, f: pb.Flow) -> None:
        if not self._table_header_done:
            self._table_header_done = True
            self._out.write("  ".join(n.ljust(w) for n, w in self._TABLE_COLS) + "  SUMMARY\n")
        sport, dport = _ports(f)
        cells = [
            flow_time(f),
            endpoint_text(f.source, f.IP.source, sport),
            endpoint_text(f.destination, f.IP.destination, dport),
            _EVENT_TYPE.get(f.event_type.type, str(f.event_type.type)),
            verdict_name(f),
        ]
        padded = [c.ljust(w) for c, (_, w) in zip(cells, self._TABLE_COLS, strict=True)]
        if self._colour:
            padded[4] = self._c(_VERDICT_COLOUR.get(f.verdict, ""), padded[4])
        summary = f.Summary + (f" {drop_text(f)}" if drop_text(f) else "")
        self._out.write("  ".join(padded) + "  " + summary + "\n")


def print_aggregate(out: TextIO, rows: Sequence[tuple[tuple[str, ...], int]], keys: Sequence[str]) -> None:
    """Counts by key, biggest first, as a table."""
    headers = [k.upper() for k in keys] + ["FLOWS"]
    table = [[*key, str(count)] for key, count in rows]
    widths = [max([len(h)] + [len(r[i]) for r in table]) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for r in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    out.flush()
