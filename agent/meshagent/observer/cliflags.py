"""`meshagent flows` filter flags (hubble observe style) into FlowFilter whitelists/blacklists.

Flags that name one side (--from-pod, --to-ip, ...) go into every filter; flags that name either side
(--pod, --ip, --label, ...) make two filters, one with them on the source side and one on the destination
side (filters in a list OR). `--not` negates the next filter flag: negated flags build the blacklist.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshagent.observer.proto.flow import flow_pb2 as pb

logger = logging.getLogger(__name__)

ITEMS = "filter_items"
_NEGATE = "_negate_next"

# flag key -> (source-side FlowFilter field, destination-side field) for "either side" flags
EITHER: dict[str, tuple[str, str]] = {
    "pod": ("source_pod", "destination_pod"),
    "ip": ("source_ip", "destination_ip"),
    "label": ("source_label", "destination_label"),
    "port": ("source_port", "destination_port"),
    "identity": ("source_identity", "destination_identity"),
    "service": ("source_service", "destination_service"),
    "workload": ("source_workload", "destination_workload"),
}
ONE_SIDE: dict[str, str] = {
    f"{side}-{key}": fields[0 if side == "from" else 1]
    for key, fields in EITHER.items()
    for side in ("from", "to")
}
EVENT_TYPES = {"drop": 1, "trace": 4, "policy-verdict": 5}
VERDICTS = {"FORWARDED", "DROPPED", "AUDIT", "TRANSLATED", "ERROR", "REDIRECTED", "TRACED"}


class FlagError(ValueError):
    pass


@dataclass(frozen=True)
class FilterItem:
    key: str
    value: str
    negated: bool


class _FilterFlag(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        ns: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = list(getattr(ns, ITEMS, None) or [])
        items.append(FilterItem(self.dest, str(values), bool(getattr(ns, _NEGATE, False))))
        setattr(ns, ITEMS, items)
        setattr(ns, _NEGATE, False)


class _Not(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        ns: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(ns, _NEGATE, True)


def add_filter_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (repeat a flag to OR its values; different flags AND)")
    g.add_argument("--not", nargs=0, action=_Not, help="negate the next filter flag")

    def flag(*names: str, dest: str, help: str) -> None:
        g.add_argument(*names, dest=dest, action=_FilterFlag, metavar="VALUE", help=help)

    flag("--pod", dest="pod", help="[namespace/]pod-name-prefix, either side")
    flag("--from-pod", dest="from-pod", help="source pod")
    flag("--to-pod", dest="to-pod", help="destination pod")
    flag("-n", "--namespace", dest="namespace", help="namespace, either side")
    flag("--from-namespace", dest="from-namespace", help="source namespace")
    flag("--to-namespace", dest="to-namespace", help="destination namespace")
    flag("--label", "-l", dest="label", help="label selector, either side")
    flag("--from-label", dest="from-label", help="source label selector")
    flag("--to-label", dest="to-label", help="destination label selector")
    flag("--ip", dest="ip", help="IP or CIDR, either side")
    flag("--from-ip", dest="from-ip", help="source IP or CIDR")
    flag("--to-ip", dest="to-ip", help="destination IP or CIDR")
    flag("--port", dest="port", help="L4 port, either side")
    flag("--from-port", dest="from-port", help="source port")
    flag("--to-port", dest="to-port", help="destination port")
    flag("--identity", dest="identity", help="security identity, either side")
    flag("--from-identity", dest="from-identity", help="source identity")
    flag("--to-identity", dest="to-identity", help="destination identity")
    flag("--service", dest="service", help="[namespace/]service, either side")
    flag("--from-service", dest="from-service", help="source service")
    flag("--to-service", dest="to-service", help="destination service")
    flag("--protocol", dest="protocol", help="tcp, udp, icmp, sctp")
    flag("--verdict", dest="verdict", help="FORWARDED, DROPPED, AUDIT, TRANSLATED")
    flag("-t", "--type", dest="type", help="drop, trace, policy-verdict (optionally TYPE:SUBTYPE)")
    flag("--node-name", dest="node-name", help="node name glob")
    flag("--traffic-direction", dest="traffic-direction", help="ingress or egress")
    flag("--uuid", dest="uuid", help="flow uuid")


def _set(flt: pb.FlowFilter, field: str, value: str) -> None:
    target = getattr(flt, field)
    if field.endswith("_identity"):
        if not value.isdigit():
            raise FlagError(f"identity must be a number, got {value!r}")
        target.append(int(value))
    elif field.endswith("_workload"):
        kind, _, name = value.rpartition("/")
        target.add(name=name, kind=kind)
    else:
        target.append(value)


def _apply_plain(flt: pb.FlowFilter, key: str, value: str) -> None:
    if key == "protocol":
        flt.protocol.append(value)
    elif key == "verdict":
        v = value.upper()
        if v not in VERDICTS:
            raise FlagError(f"unknown verdict {value!r} (one of {', '.join(sorted(VERDICTS))})")
        flt.verdict.append(pb.Verdict.Value(v))  # type: ignore[arg-type]
    elif key == "type":
        name, _, sub = value.partition(":")
        if name not in EVENT_TYPES:
            raise FlagError(f"unknown event type {value!r} (one of {', '.join(EVENT_TYPES)})")
        et = flt.event_type.add(type=EVENT_TYPES[name])
        if sub:
            if not sub.isdigit():
                raise FlagError(f"event sub-type must be a number, got {sub!r}")
            et.match_sub_type, et.sub_type = True, int(sub)
    elif key == "node-name":
        flt.node_name.append(value)
    elif key == "traffic-direction":
        d = value.upper()
        if d not in ("INGRESS", "EGRESS"):
            raise FlagError(f"traffic direction must be ingress or egress, got {value!r}")
        flt.traffic_direction.append(pb.TrafficDirection.Value(d))  # type: ignore[arg-type]
    elif key == "uuid":
        flt.uuid.append(value)
    else:
        raise FlagError(f"unknown filter flag {key!r}")


def _with_namespace(pods: list[str], namespaces: list[str]) -> list[str]:
    if not namespaces:
        return pods
    out = []
    for p in pods:
        if "/" in p:
            out.append(p)
        else:
            out.extend(f"{ns}/{p}" for ns in namespaces)
    return out


def _build(items: Sequence[FilterItem]) -> list[pb.FlowFilter]:
    if not items:
        return []
    namespaces = [i.value for i in items if i.key == "namespace"]
    has_pod = any(i.key in ("pod", "from-pod", "to-pod") for i in items)
    base = pb.FlowFilter()
    either: list[FilterItem] = []
    for it in items:
        if it.key == "namespace":
            continue
        if it.key in ("from-namespace", "to-namespace"):
            _set(base, "source_pod" if it.key.startswith("from") else "destination_pod", f"{it.value}/")
        elif it.key in EITHER:
            either.append(it)
        elif it.key in ONE_SIDE:
            field = ONE_SIDE[it.key]
            values = _with_namespace([it.value], namespaces) if it.key.endswith("-pod") else [it.value]
            for v in values:
                _set(base, field, v)
        else:
            _apply_plain(base, it.key, it.value)
    if namespaces and not has_pod:
        either.extend(FilterItem("pod", f"{ns}/", False) for ns in namespaces)
    if not either:
        return [base]
    out = []
    for side in (0, 1):
        flt = pb.FlowFilter()
        flt.CopyFrom(base)
        for it in either:
            values = _with_namespace([it.value], namespaces) if it.key == "pod" else [it.value]
            for v in values:
                _set(flt, EITHER[it.key][side], v)
        out.append(flt)
    return out


def build_filters(items: Sequence[FilterItem]) -> tuple[list[pb.FlowFilter], list[pb.FlowFilter]]:
    """(whitelist, blacklist) from the parsed filter flags."""
    return _build([i for i in items if not i.negated]), _build([i for i in items if i.negated])
