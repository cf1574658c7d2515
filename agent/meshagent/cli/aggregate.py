"""Counts flows by a chosen key (src, dst, port, verdict, ...) so a busy node can be read at a glance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from meshagent.observer.proto.flow import flow_pb2 as pb


def _ep(ep: pb.Endpoint, ip: str) -> str:
    if ep.pod_name:
        return f"{ep.namespace}/{ep.pod_name}"
    reserved = [lb.partition(":")[2] for lb in ep.labels if lb.startswith("reserved:")]
    return f"{ip} ({','.join(reserved)})" if reserved else ip


def _dport(f: pb.Flow) -> str:
    kind = f.l4.WhichOneof("protocol")
    if kind in ("TCP", "UDP", "SCTP"):
        return f"{getattr(f.l4, kind).destination_port}/{kind.lower()}"
    return (kind or "ip").lower()


KEYS: dict[str, Callable[[pb.Flow], str]] = {
    "src": lambda f: _ep(f.source, f.IP.source),
    "dst": lambda f: _ep(f.destination, f.IP.destination),
    "src-ip": lambda f: f.IP.source,
    "dst-ip": lambda f: f.IP.destination,
    "port": _dport,
    "protocol": lambda f: (f.l4.WhichOneof("protocol") or "ip").lower(),
    "verdict": lambda f: pb.Verdict.Name(f.verdict),
    "direction": lambda f: pb.TrafficDirection.Name(f.traffic_direction),
    "namespace": lambda f: f.source.namespace or f.destination.namespace,
}


class AggregateError(ValueError):
    pass


def parse_keys(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in KEYS]
    if not keys or unknown:
        raise AggregateError(f"aggregate keys must be among {', '.join(KEYS)}; got {text!r}")
    return keys


class Aggregator:
    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)
        self._getters = [KEYS[k] for k in keys]
        self._counts: Counter[tuple[str, ...]] = Counter()

    def add(self, f: pb.Flow) -> None:
        self._counts[tuple(g(f) for g in self._getters)] += 1

    def rows(self) -> list[tuple[tuple[str, ...], int]]:
        return sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))

    def reset(self) -> None:
        self._counts.clear()
