"""Hubble FlowFilter semantics: fields within one filter AND, values within a field OR, filters in a
list OR, and a request's result is whitelist minus blacklist. Malformed filters raise FilterError."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Sequence

from google.protobuf import unknown_fields

from meshagent.observer.labels import SelectorError, compile_selector
from meshagent.observer.proto.flow import flow_pb2 as pb

FlowPredicate = Callable[[pb.Flow], bool]

# Protocol names a filter may use; L7 names are valid but never match an L4-only datapath's flows.
_L4_PROTOCOLS = {
    "tcp": "TCP",
    "udp": "UDP",
    "sctp": "SCTP",
    "icmp": "ICMPv4",
    "icmpv4": "ICMPv4",
    "icmpv6": "ICMPv6",
}
_L7_PROTOCOLS = {"http", "dns", "kafka"}
_STATUS_RE = re.compile(r"^[1-5][0-9]{0,2}\+?$")


class FilterError(ValueError):
    """A filter the server cannot honour as written."""


def _never(_: pb.Flow) -> bool:
    return False


def _ip_predicate(values: Sequence[str], get: Callable[[pb.Flow], str], what: str) -> FlowPredicate:
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError as err:
            raise FilterError(f"{what}: {v!r} is not an IP address or CIDR") from err

    def pred(f: pb.Flow) -> bool:
        text = get(f)
        if not text:
            return False
        addr = ipaddress.ip_address(text)
        return any(addr in n for n in nets)

    return pred


def _split_ns_name(value: str, what: str) -> tuple[str | None, str]:
    if value.count("/") > 1:
        raise FilterError(f"{what}: {value!r} must be [namespace/]name")
    if "/" in value:
        ns, _, name = value.partition("/")
        if not ns:
            raise FilterError(f"{what}: {value!r} has an empty namespace")
        return ns, name
    return None, value


def _pod_predicate(values: Sequence[str], get: Callable[[pb.Flow], pb.Endpoint], what: str) -> FlowPredicate:
    specs = [_split_ns_name(v, what) for v in values]

    def pred(f: pb.Flow) -> bool:
        ep = get(f)
        for ns, prefix in specs:
            if ns is not None and ep.namespace != ns:
                continue
            if ns is None and not ep.pod_name:
                continue  # "name-prefix" never matches an endpoint that is not a pod
            if ep.pod_name.startswith(prefix):
                return True
        return False

    return pred


def _service_predicate(
    values: Sequence[str], get: Callable[[pb.Flow], pb.Service], has: Callable[[pb.Flow], bool], what: str
) -> FlowPredicate:
    specs = [_split_ns_name(v, what) for v in values]

    def pred(f: pb.Flow) -> bool:
        if not has(f):
            return False
        svc = get(f)
        return any((ns is None or svc.namespace == ns) and svc.name.startswith(p) for ns, p in specs)

    return pred


def _label_predicate(
    values: Sequence[str], get: Callable[[pb.Flow], Sequence[str]], what: str
) -> FlowPredicate:
    try:
        preds = [compile_selector(v) for v in values]
    except SelectorError as err:
        raise FilterError(f"{what}: {err}") from err
    return lambda f: any(p(get(f)) for p in preds)


def _port_predicate(values: Sequence[str], which: int, what: str) -> FlowPredicate:
    ports: set[int] = set()
    for v in values:
        if not v.isdigit() or not 0 <= int(v) <= 65535:
            raise FilterError(f"{what}: {v!r} is not a port number (0-65535)")
        ports.add(int(v))

    def pred(f: pb.Flow) -> bool:
        kind = f.l4.WhichOneof("protocol")
        if kind not in ("TCP", "UDP", "SCTP"):
            return False
        l4 = getattr(f.l4, kind)
        return (l4.source_port if which == 0 else l4.destination_port) in ports

    return pred


def _workload_predicate(
    values: Sequence[pb.Workload], get: Callable[[pb.Flow], pb.Endpoint]
) -> FlowPredicate:
    wanted = [(w.name, w.kind) for w in values]

    def pred(f: pb.Flow) -> bool:
        for w in get(f).workloads:
            for name, kind in wanted:
                if (not name or name == w.name) and (not kind or kind.lower() == w.kind.lower()):
                    return True
        return False

    return pred


def _glob_predicate(values: Sequence[str], get: Callable[[pb.Flow], str], what: str) -> FlowPredicate:
    regexes = []
    for v in values:
        if not v:
            raise FilterError(f"{what}: empty pattern")
        # "cluster/node-glob": this server speaks for one cluster, so only the node part is matched.
        pattern = v.rsplit("/", 1)[-1] or "*"
        regexes.append(re.compile(fnmatch.translate(pattern)))
    return lambda f: any(r.match(get(f)) for r in regexes)


def _regex_list(values: Sequence[str], what: str) -> None:
    for v in values:
        try:
            re.compile(v)
        except re.error as err:
            raise FilterError(f"{what}: bad regular expression {v!r}: {err}") from err


def _tcp_flags_predicate(values: Sequence[pb.TCPFlags]) -> FlowPredicate:
    names = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")
    wanted = [[n for n in names if getattr(v, n)] for v in values]
    if any(not w for w in wanted):
        raise FilterError("tcp_flags: an entry sets no flag")

    def pred(f: pb.Flow) -> bool:
        if f.l4.WhichOneof("protocol") != "TCP":
            return False
        flags = f.l4.TCP.flags
        return any(all(getattr(flags, n) for n in w) for w in wanted)

    return pred


def compile_filter(flt: pb.FlowFilter) -> FlowPredicate:
    """All set fields must match. Raises FilterError for malformed values or fields we do not know."""
    ufs = unknown_fields.UnknownFieldSet(flt)
    unknown = [ufs[i].field_number for i in range(len(ufs))]
    if unknown:
        raise FilterError(f"unsupported FlowFilter field number(s) {sorted(set(unknown))}")
    preds: list[FlowPredicate] = []
    add = preds.append
    if flt.uuid:
        uuids = frozenset(flt.uuid)
        add(lambda f: f.uuid in uuids)
    if flt.source_ip:
        add(_ip_predicate(flt.source_ip, lambda f: f.IP.source, "source_ip"))
    if flt.source_ip_xlated:
        add(_ip_predicate(flt.source_ip_xlated, lambda f: f.IP.source_xlated, "source_ip_xlated"))
    if flt.destination_ip:
        add(_ip_predicate(flt.destination_ip, lambda f: f.IP.destination, "destination_ip"))
    if flt.source_pod:
        add(_pod_predicate(flt.source_pod, lambda f: f.source, "source_pod"))
    if flt.destination_pod:
        add(_pod_predicate(flt.destination_pod, lambda f: f.destination, "destination_pod"))
    if flt.source_fqdn:
        add(_glob_names(flt.source_fqdn, lambda f: f.source_names))
    if flt.destination_fqdn:
        add(_glob_names(flt.destination_fqdn, lambda f: f.destination_names))
    if flt.source_label:
        add(_label_predicate(flt.source_label, lambda f: f.source.labels, "source_label"))
    if flt.destination_label:
        add(_label_predicate(flt.destination_label, lambda f: f.destination.labels, "destination_label"))
    if flt.source_service:
        add(
            _service_predicate(
                flt.source_service,
                lambda f: f.source_service,
                lambda f: f.HasField("source_service"),
                "source_service",
            )
        )
    if flt.destination_service:
        add(
            _service_predicate(
                flt.destination_service,
                lambda f: f.destination_service,
                lambda f: f.HasField("destination_service"),
                "destination_service",
            )
        )
    if flt.source_workload:
        add(_workload_predicate(flt.source_workload, lambda f: f.source))
    if flt.destination_workload:
        add(_workload_predicate(flt.destination_workload, lambda f: f.destination))
    if flt.source_cluster_name:
        clusters = frozenset(flt.source_cluster_name)
        add(lambda f: f.source.cluster_name in clusters)
    if flt.destination_cluster_name:
        dclusters = frozenset(flt.destination_cluster_name)
        add(lambda f: f.destination.cluster_name in dclusters)
    if flt.traffic_direction:
        dirs = frozenset(flt.traffic_direction)
        add(lambda f: f.traffic_direction in dirs)
    if flt.verdict:
        verdicts = frozenset(flt.verdict)
        add(lambda f: f.verdict in verdicts)
    if flt.drop_reason_desc:
        reasons = frozenset(flt.drop_reason_desc)
        add(lambda f: f.verdict == pb.DROPPED and f.drop_reason_desc in reasons)
    if flt.interface:
        ifaces = [(i.index, i.name) for i in flt.interface]
        add(
            lambda f: any(
                (not ix or ix == f.interface.index) and (not nm or nm == f.interface.name)
                for ix, nm in ifaces
            )
        )
    if flt.event_type:
        types = [(e.type, e.match_sub_type, e.sub_type) for e in flt.event_type]
        add(
            lambda f: any(
                t == f.event_type.type and (not m or s == f.event_type.sub_type) for t, m, s in types
            )
        )
    if flt.protocol:
        kinds: set[str] = set()
        for p in flt.protocol:
            name = p.lower()
            if name in _L4_PROTOCOLS:
                kinds.add(_L4_PROTOCOLS[name])
            elif name not in _L7_PROTOCOLS:
                raise FilterError(f"protocol: unknown protocol {p!r}")
        add(lambda f: f.l4.WhichOneof("protocol") in kinds)
    if flt.source_port:
        add(_port_predicate(flt.source_port, 0, "source_port"))
    if flt.destination_port:
        add(_port_predicate(flt.destination_port, 1, "destination_port"))
    if flt.reply:
        replies = frozenset(flt.reply)
        add(lambda f: f.HasField("is_reply") and f.is_reply.value in replies)
    if flt.source_identity:
        sids = frozenset(flt.source_identity)
        add(lambda f: f.source.identity in sids)
    if flt.destination_identity:
        dids = frozenset(flt.destination_identity)
        add(lambda f: f.destination.identity in dids)
    if flt.tcp_flags:
        add(_tcp_flags_predicate(flt.tcp_flags))
    if flt.node_name:
        add(_glob_predicate(flt.node_name, lambda f: f.node_name, "node_name"))
    if flt.node_labels:
        add(_label_predicate(flt.node_labels, lambda f: f.node_labels, "node_labels"))
    if flt.ip_version:
        versions = frozenset(flt.ip_version)
        add(lambda f: f.IP.ipVersion in versions)
    if flt.encrypted:
        encrypted = frozenset(flt.encrypted)
        add(lambda f: f.IP.encrypted in encrypted)
    # Layer 7 and tracing fields: validated, and (correctly) matching nothing, since no flow carries them.
    for code in flt.http_status_code:
        if not _STATUS_RE.match(code):
            raise FilterError(f"http_status_code: {code!r} is not like 404 or 5+")
    _regex_list(flt.http_path, "http_path")
    _regex_list(flt.http_url, "http_url")
    _regex_list(flt.dns_query, "dns_query")
    l7_or_trace = (
        flt.http_status_code,
        flt.http_method,
        flt.http_path,
        flt.http_url,
        flt.dns_query,
        flt.trace_id,
    )
    if any(l7_or_trace):
        add(_never)

    if not preds:
        return lambda f: True
    if len(preds) == 1:
        return preds[0]
    return lambda f: all(p(f) for p in preds)


def _glob_names(values: Sequence[str], get: Callable[[pb.Flow], Sequence[str]]) -> FlowPredicate:
    regexes = [re.compile(fnmatch.translate(v.lower())) for v in values]
    return lambda f: any(r.match(n.lower()) for n in get(f) for r in regexes)


# Fields that differ between flows sharing one template (see convert.PreparedFlow); the rest of a filter
# can be decided once per template.
_PER_EVENT_FIELDS = ("uuid", "source_port", "destination_port", "tcp_flags", "reply")


class _SplitFilter:
    __slots__ = ("event", "full", "template")

    def __init__(self, flt: pb.FlowFilter) -> None:
        self.full = compile_filter(flt)
        tpl = pb.FlowFilter()
        tpl.CopyFrom(flt)
        evt = pb.FlowFilter()
        for name in _PER_EVENT_FIELDS:
            values = getattr(flt, name)
            if len(values):
                getattr(evt, name).extend(values)
                tpl.ClearField(name)
        self.template = compile_filter(tpl)
        self.event: FlowPredicate | None = compile_filter(evt) if evt.ListFields() else None


TemplateCache = dict[int, tuple[pb.Flow, list[bool], list[bool]]]


class FlowMatcher:
    """whitelist (any of; empty means everything) minus blacklist (any of)."""

    def __init__(
        self, whitelist: Sequence[pb.FlowFilter] = (), blacklist: Sequence[pb.FlowFilter] = ()
    ) -> None:
        self._white = [_SplitFilter(f) for f in whitelist]
        self._black = [_SplitFilter(f) for f in blacklist]
        self.matches_everything = not self._white and not self._black

    def __call__(self, flow: pb.Flow) -> bool:
        if self._white and not any(w.full(flow) for w in self._white):
            return False
        return not any(b.full(flow) for b in self._black)

    def match_prepared(self, template: pb.Flow, build: Callable[[], pb.Flow], cache: TemplateCache) -> bool:
        """Same answer as `self(build())`, but decides the template-level fields once per template and
        builds the flow only when a port, flag, reply or uuid field still has to be checked."""
        hit = cache.get(id(template))
        if hit is None or hit[0] is not template:
            if len(cache) > 10_000:
                cache.clear()
            # The cache holds the template itself, so its id cannot be reused while the entry lives.
            hit = (
                template,
                [w.template(template) for w in self._white],
                [b.template(template) for b in self._black],
            )
            cache[id(template)] = hit
        _, white_ok, black_ok = hit
        if self._white:
            for i, w in enumerate(self._white):
                if white_ok[i] and (w.event is None or w.event(build())):
                    break
            else:
                return False
        for i, b in enumerate(self._black):
            if black_ok[i] and (b.event is None or b.event(build())):
                return False
        return True
