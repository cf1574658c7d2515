"""`meshagent flows` filter flags (hubble observe style) into FlowFilter whitelists/blacklists.

Flags that name one side (--from-pod, --to-ip, ...) go into every filter; flags that name either side
(--pod, --ip, --label, ...) make two filters, one with them on the source side and one on the destination
side (filters in a list OR). `--not` negates the next filter flag: negated flags build the blacklist.

click gathers the values of each option into a tuple, which loses where `--not` stood among them; the
command records the order in which the parser met the options (`FilterOrderCommand`), and `filter_items`
pairs each occurrence with its value again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from meshagent.observer.proto.flow import flow_pb2 as pb

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
VERDICTS = ("FORWARDED", "DROPPED", "AUDIT", "TRANSLATED", "ERROR", "REDIRECTED", "TRACED")
_ORDER = "filter-flag-order"  # key in click's Context.meta: option names in the order given
_NOT = "not_"


class FlagError(ValueError):
    pass


@dataclass(frozen=True)
class FilterItem:
    key: str
    value: str
    negated: bool


# (flag names, filter key, help, click type); the key is what _build and _apply_plain understand.
_FILTER_FLAGS: tuple[tuple[tuple[str, ...], str, str, click.ParamType], ...] = (
    (("--pod",), "pod", "[namespace/]pod-name-prefix, either side", click.STRING),
    (("--from-pod",), "from-pod", "source pod", click.STRING),
    (("--to-pod",), "to-pod", "destination pod", click.STRING),
    (("-n", "--namespace"), "namespace", "namespace, either side", click.STRING),
    (("--from-namespace",), "from-namespace", "source namespace", click.STRING),
    (("--to-namespace",), "to-namespace", "destination namespace", click.STRING),
    (("--label", "-l"), "label", "label selector, either side", click.STRING),
    (("--from-label",), "from-label", "source label selector", click.STRING),
    (("--to-label",), "to-label", "destination label selector", click.STRING),
    (("--ip",), "ip", "IP or CIDR, either side", click.STRING),
    (("--from-ip",), "from-ip", "source IP or CIDR", click.STRING),
    (("--to-ip",), "to-ip", "destination IP or CIDR", click.STRING),
    (("--port",), "port", "L4 port, either side", click.STRING),
    (("--from-port",), "from-port", "source port", click.STRING),
    (("--to-port",), "to-port", "destination port", click.STRING),
    (("--identity",), "identity", "security identity, either side", click.IntRange(min=0)),
    (("--from-identity",), "from-identity", "source identity", click.IntRange(min=0)),
    (("--to-identity",), "to-identity", "destination identity", click.IntRange(min=0)),
    (("--service",), "service", "[namespace/]service, either side", click.STRING),
    (("--from-service",), "from-service", "source service", click.STRING),
    (("--to-service",), "to-service", "destination service", click.STRING),
    (("--protocol",), "protocol", "tcp, udp, icmp, sctp", click.STRING),
    (("--verdict",), "verdict", "flow verdict", click.Choice(VERDICTS, case_sensitive=False)),
    (("-t", "--type"), "type", "drop, trace, policy-verdict (optionally TYPE:SUBTYPE)", click.STRING),
    (("--node-name",), "node-name", "node name glob", click.STRING),
    (
        ("--traffic-direction",),
        "traffic-direction",
        "ingress or egress",
        click.Choice(("ingress", "egress"), case_sensitive=False),
    ),
    (("--uuid",), "uuid", "flow uuid", click.STRING),
)
# click parameter name -> filter key
_PARAM_KEYS = {key.replace("-", "_"): key for _, key, _, _ in _FILTER_FLAGS}

F = TypeVar("F", bound=Callable[..., Any])


class FilterOrderCommand(click.Command):
    """A command that remembers the order of its options on the command line (for `--not`)."""

    def make_parser(self, ctx: click.Context) -> Any:
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_in_order(args: list[str]) -> Any:
            opts, rest, order = parse(args=args)
            ctx.meta[_ORDER] = [param.name for param in order]
            return opts, rest, order

        parser.parse_args = parse_in_order  # type: ignore[method-assign]
        return parser


def filter_options(command: F) -> F:
    """The filter flags (repeat a flag to OR its values; different flags AND), for a FilterOrderCommand."""
    for names, key, text, kind in reversed(_FILTER_FLAGS):
        command = click.option(
            *names,
            key.replace("-", "_"),
            type=kind,
            multiple=True,
            metavar="VALUE",
            help=text,
            allow_from_autoenv=False,  # a filter is ordered among the flags: none come from the environment
        )(command)
    return click.option(
        "--not", _NOT, count=True, help="negate the next filter flag", allow_from_autoenv=False
    )(command)


def filter_items(ctx: click.Context, params: Mapping[str, Any]) -> list[FilterItem]:
    """The filter flags as given, in order, each marked negated when `--not` came just before it."""
    remaining = {name: list(params.get(name) or ()) for name in _PARAM_KEYS}
    items: list[FilterItem] = []
    negate = False
    for name in ctx.meta.get(_ORDER, []):
        if name == _NOT:
            negate = True
        elif name in _PARAM_KEYS and remaining[name]:
            items.append(FilterItem(_PARAM_KEYS[name], str(remaining[name].pop(0)), negate))
            negate = False
    return items


def _set(flt: pb.FlowFilter, field: str, value: str) -> None:
    target = getattr(flt, field)
    if field.endswith("_identity"):
        target.append(int(value))  # click checked it is a number
    elif field.endswith("_workload"):
        kind, _, name = value.rpartition("/")
        target.add(name=name, kind=kind)
    else:
        target.append(value)


def _apply_plain(flt: pb.FlowFilter, key: str, value: str) -> None:
    if key == "protocol":
        flt.protocol.append(value)
    elif key == "verdict":
        flt.verdict.append(pb.Verdict.Value(value.upper()))  # type: ignore[arg-type]
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
        flt.traffic_direction.append(pb.TrafficDirection.Value(value.upper()))  # type: ignore[arg-type]
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
