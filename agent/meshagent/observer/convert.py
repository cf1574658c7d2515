"""Builds Hubble-compatible `flow.Flow` messages from datapath events plus metadata from an `Enricher`."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address

from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import (
    IDENTITY_FIRST_CIDR,
    IDENTITY_HOST,
    IDENTITY_WORLD,
    Direction,
    Verdict,
)
from meshagent.observer.clock import WallClock
from meshagent.observer.enrich import Enricher, PolicyRef, ServiceRef
from meshagent.observer.proto.flow import flow_pb2 as pb

# Monitor message types as Hubble clients know them (`hubble observe --type drop|trace|policy-verdict`).
MESSAGE_TYPE_DROP = 1
MESSAGE_TYPE_TRACE = 4
MESSAGE_TYPE_POLICY_VERDICT = 5

# Our MA_DROP_* codes onto Hubble's DropReason numbers (the closest meaning each).
DROP_REASON_TO_HUBBLE: dict[DropReason, int] = {
    DropReason.NONE: pb.DROP_REASON_UNKNOWN,
    DropReason.POLICY_DENIED: pb.POLICY_DENY,  # an explicit deny rule matched
    DropReason.POLICY_DEFAULT_DENY: pb.POLICY_DENIED,  # isolated endpoint, nothing allowed it
    DropReason.SPOOFED_SOURCE: pb.INVALID_SOURCE_IP,
    DropReason.MALFORMED: pb.INVALID_PACKET_DROPPED,
    DropReason.CT_FULL: pb.CT_MAP_INSERTION_FAILED,
    DropReason.FRAG_NO_FIRST: pb.FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
    DropReason.IPV6_UNSUPPORTED: pb.UNSUPPORTED_L3_PROTOCOL,
    DropReason.UNKNOWN_L4: pb.UNKNOWN_L4_PROTOCOL,
    DropReason.ETHERTYPE: pb.UNSUPPORTED_L2_PROTOCOL,
    DropReason.NO_ENDPOINT: pb.DROP_EP_NOT_READY,
    DropReason.ISOLATED: pb.POLICY_DENIED,
    DropReason.UNENCRYPTED: pb.UNENCRYPTED_TRAFFIC,
}

_VERDICT_TO_HUBBLE: dict[Verdict, int] = {
    Verdict.ALLOWED: pb.FORWARDED,
    Verdict.DENIED: pb.DROPPED,
    Verdict.AUDITED: pb.AUDIT,
}

_TCP_FLAG_BITS: tuple[tuple[int, str], ...] = (
    (0x01, "FIN"),
    (0x02, "SYN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x10, "ACK"),
    (0x20, "URG"),
    (0x40, "ECE"),
    (0x80, "CWR"),
)

RESERVED_WORLD = "reserved:world"
RESERVED_HOST = "reserved:host"

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMPV6 = 1, 6, 17, 132, 58


class UuidSource:
    """Unique flow ids, cheap: a random per-process prefix plus a counter, in UUID text form. A flow takes
    its number at ingest; the text is made only when the flow is read."""

    def __init__(self, start: int = 0) -> None:
        r = os.urandom(10).hex()
        self.prefix = f"{r[0:8]}-{r[8:12]}-4{r[13:16]}-{'89ab'[int(r[16], 16) & 3]}{r[17:20]}-"
        self.prefix_bytes = self.prefix.encode()
        # count.__next__ runs in C without releasing the GIL: a lock-free atomic counter (a lock cost more
        # than the rest of taking an id).
        self.take: Callable[[], int] = itertools.count(start + 1).__next__

    def text(self, n: int) -> str:
        return f"{self.prefix}{n:012x}"

    def next(self) -> str:
        return self.text(self.take())


class Template:
    """One conversation's flow template plus what is derived from it once, shared by its flows."""

    __slots__ = ("flow", "protocol", "static_wire")

    def __init__(self, flow: pb.Flow, protocol: int) -> None:
        self.flow = flow
        self.protocol = protocol  # part of the template key: the same for all its flows
        # The template's encoding without the per-flow fields; made by observer.wire on first use.
        self.static_wire: bytes | None = None


class PreparedFlow:
    """A flow whose metadata is settled (template, time, uuid) but whose message is built on demand.

    It is also its own entry in the flow ring (observer/ring.py, same attributes as RingEntry: seq,
    time_ns, lost, prepared, flow, metadata): the ring holds about 65k of them, and one object fewer per
    flow is memory, and time when the ring overwrites and frees the oldest."""

    __slots__ = ("_flow", "event", "ids", "number", "seq", "shared", "template", "time_ns")

    lost: None = None  # a flow, never a lost-event marker

    def __init__(
        self, event: DatapathEvent, shared: Template, time_ns: int, ids: UuidSource, number: int
    ) -> None:
        self.event = event
        self.shared = shared
        self.template = shared.flow
        self.time_ns = time_ns
        self.ids = ids
        self.number = number  # the uuid's number, in `ids`
        self.seq = -1  # its sequence number in the flow ring, set when pushed there
        self._flow: pb.Flow | None = None

    @property
    def uuid(self) -> str:
        return self.ids.text(self.number)

    @property
    def prepared(self) -> PreparedFlow:
        return self

    @property
    def metadata(self) -> pb.Flow:
        """The template (endpoints, verdict, policies; no time or ports): enough for questions about who
        talked, without building the message."""
        return self.template

    @property
    def flow(self) -> pb.Flow:
        return self.message()

    def message(self) -> pb.Flow:
        f = self._flow
        if f is None:
            # Two readers may race here; both build the same message and either result is fine.
            f = _materialize(self)
            self._flow = f
        return f


def _materialize(p: PreparedFlow) -> pb.Flow:
    ev = p.event
    f = pb.Flow()
    f.CopyFrom(p.template)
    f.time.seconds, f.time.nanos = divmod(p.time_ns, 1_000_000_000)
    f.uuid = p.uuid
    if ev.is_reply:
        f.is_reply.value = True
        f.reply = True
    proto = ev.protocol
    if proto == PROTO_TCP:
        tcp = f.l4.TCP
        tcp.source_port = ev.sport
        tcp.destination_port = ev.dport
        bits = ev.tcp_flags
        if bits:
            flags = tcp.flags
            for n in _flag_names(bits):
                setattr(flags, n, True)
            f.Summary = TCP_SUMMARIES[bits]
    elif proto == PROTO_UDP:
        f.l4.UDP.source_port = ev.sport
        f.l4.UDP.destination_port = ev.dport
    elif proto == PROTO_SCTP:
        f.l4.SCTP.source_port = ev.sport
        f.l4.SCTP.destination_port = ev.dport
    return f


class FlowBuilder:
    """Turns one DatapathEvent into one flow.Flow. Thread-safe for a single caller at a time per instance."""

    def __init__(
        self,
        *,
        enricher: Enricher,
        node_name: str,
        clock: WallClock | None = None,
        uuids: UuidSource | None = None,
        cache_ttl_s: float = 1.0,  # metadata changes show up in flows within this time
        cache_max: int = 65536,
    ) -> None:
        self._enricher = enricher
        self._node_name = node_name
        self._clock = clock or WallClock()
        self._uuids = uuids or UuidSource()
        self._ifnames: dict[int, str] = {}
        self._templates: dict[tuple[object, ...], Template] = {}
        self._cache_ttl_s = cache_ttl_s
        self._cache_max = cache_max
        self._cache_expiry = 0.0

    @property
    def node_name(self) -> str:
        return self._node_name

    def build(self, ev: DatapathEvent) -> pb.Flow:
        return self.prepare(ev).message()

    def prepare(self, ev: DatapathEvent) -> PreparedFlow:
        """The ingest half: enrichment (via the cached template), wall time and uuid are fixed now; the
        Flow message itself is made on first read (`PreparedFlow.flow`), so a flow nobody reads costs
        little more than a template lookup."""
        return self.prepare_many((ev,))[0]

    def prepare_many(self, events: Sequence[DatapathEvent]) -> list[PreparedFlow]:
        """`prepare` for a batch (the reader's drain), with the per-batch work done once."""
        # Everything but time, uuid, ports, flags and reply comes from a per-"conversation" template: the
        # enrichment lookups and nested message building run once per key per cache period, not per event.
        now = time.monotonic()
        if now >= self._cache_expiry or len(self._templates) >= self._cache_max:
            self._templates.clear()
            self._cache_expiry = now + self._cache_ttl_s
        templates = self._templates
        service_by_addr = self._enricher.service_by_addr
        offset = self._clock.offset_ns
        uuids = self._uuids
        out: list[PreparedFlow] = []
        append = out.append
        for ev in events:
            dst_svc = service_by_addr(ev.daddr, ev.dport, ev.protocol)
            # A source service only exists for replies coming back from a service address.
            src_svc = service_by_addr(ev.saddr, ev.sport, ev.protocol) if ev.is_reply else None
            # Addresses from the ring-buffer decoder carry a precomputed hash (events.py).
            key = (
                ev.type,
                ev.verdict,
                ev.drop_reason,
                ev.direction,
                ev.endpoint_id,
                ev.ifindex,
                ev.saddr,
                ev.daddr,
                ev.protocol,
                ev.rule_id,
                ev.src_identity,
                ev.dst_identity,
                dst_svc,
                src_svc,
                ev.icmp_type,  # ICMP type and code are in the template (0 for other protocols)
                ev.icmp_code,
                ev.encrypted,
            )
            shared = templates.get(key)
            if shared is None:
                shared = Template(self._template(ev, dst_svc, src_svc), ev.protocol)
                templates[key] = shared
            append(PreparedFlow(ev, shared, ev.timestamp_ns + offset, uuids, uuids.take()))
        return out

    def _template(self, ev: DatapathEvent, dst_svc: ServiceRef | None, src_svc: ServiceRef | None) -> pb.Flow:
        f = pb.Flow()
        f.node_name = self._node_name
        f.Type = pb.L3_L4
        egress = ev.direction == Direction.EGRESS
        saddr, daddr = ev.saddr, ev.daddr
        if ev.endpoint_id and saddr.is_unspecified and daddr.is_unspecified:
            # A frame the datapath could read no addresses from (not IP): its local side is the endpoint.
            local = self._enricher.endpoint_address(ev.endpoint_id)
            if local is not None:
                saddr, daddr = (local, daddr) if egress else (saddr, local)
        f.IP.source = str(saddr)
        f.IP.destination = str(daddr)
        ipv6 = saddr.version == 6 or daddr.version == 6
        f.IP.ipVersion = pb.IPv6 if ipv6 else pb.IPv4
        f.IP.encrypted = ev.encrypted
        if ev.protocol == PROTO_TCP:
            f.l4.TCP.flags.SetInParent()  # present even with no bit set, as Hubble does
            f.Summary = "TCP"
        elif ev.protocol == PROTO_UDP:
            f.l4.UDP.SetInParent()
            f.Summary = "UDP"
        elif ev.protocol == PROTO_SCTP:
            f.l4.SCTP.SetInParent()
            f.Summary = "SCTP"
        elif ev.protocol == PROTO_ICMP:
            f.l4.ICMPv4.SetInParent()
            f.l4.ICMPv4.type = ev.icmp_type
            f.l4.ICMPv4.code = ev.icmp_code
            f.Summary = "ICMPv4"
        elif ev.protocol == PROTO_ICMPV6:
            f.l4.ICMPv6.SetInParent()
            f.l4.ICMPv6.type = ev.icmp_type
            f.l4.ICMPv6.code = ev.icmp_code
            f.Summary = "ICMPv6"
        else:
            f.Summary = f"{'IPv6' if ipv6 else 'IPv4'} protocol {ev.protocol}"
        self._fill_verdict(f, ev)
        f.traffic_direction = pb.EGRESS if egress else pb.INGRESS
        f.trace_observation_point = pb.FROM_ENDPOINT if egress else pb.TO_ENDPOINT
        f.is_reply.value = False
        f.reply = False
        f.interface.index = ev.ifindex
        f.interface.name = self._ifname(ev.ifindex)
        self._fill_endpoint(f.source, saddr, ev.src_identity, ev.endpoint_id if egress else 0)
        self._fill_endpoint(f.destination, daddr, ev.dst_identity, 0 if egress else ev.endpoint_id)
        if dst_svc is not None:
            f.destination_service.name = dst_svc.name
            f.destination_service.namespace = dst_svc.namespace
        if src_svc is not None:
            f.source_service.name = src_svc.name
            f.source_service.namespace = src_svc.namespace
        self._fill_policies(f, ev, egress)
        return f

    def _fill_verdict(self, f: pb.Flow, ev: DatapathEvent) -> None:
        drop = DROP_REASON_TO_HUBBLE.get(ev.drop_reason, pb.DROP_REASON_UNKNOWN)
        if ev.type == EventType.DROP:
            f.verdict = pb.DROPPED
            f.event_type.type = MESSAGE_TYPE_DROP
            f.event_type.sub_type = drop
        elif ev.type == EventType.POLICY_VERDICT:
            f.event_type.type = MESSAGE_TYPE_POLICY_VERDICT
            verdict = _VERDICT_TO_HUBBLE.get(ev.verdict, pb.VERDICT_UNKNOWN) if ev.verdict else pb.FORWARDED
            f.verdict = verdict  # type: ignore[assignment]
            if f.verdict == pb.DROPPED and drop == pb.DROP_REASON_UNKNOWN:
                drop = pb.POLICY_DENY if ev.rule_id else pb.POLICY_DENIED
        elif ev.type == EventType.TRANSLATED:
            # A socket-level Service translation: the backend chosen, or a refusal (no backend).
            f.event_type.type = MESSAGE_TYPE_TRACE
            f.Type = pb.SOCK
            if ev.verdict == Verdict.DENIED:
                f.verdict = pb.DROPPED
                drop = pb.SERVICE_BACKEND_NOT_FOUND
            else:
                f.verdict = pb.TRANSLATED
        else:  # CONN_CLOSE and anything newer: a trace of a tracked connection
            f.event_type.type = MESSAGE_TYPE_TRACE
            f.verdict = pb.FORWARDED
            f.trace_reason = pb.ESTABLISHED
        if f.verdict == pb.DROPPED:
            f.drop_reason_desc = drop  # type: ignore[assignment]
            f.drop_reason = drop

    def _fill_endpoint(
        self, ep: pb.Endpoint, ip: IPv4Address | IPv6Address, identity: int, endpoint_id: int
    ) -> None:
        ep.identity = identity
        if endpoint_id:
            ep.ID = endpoint_id
        info = self._enricher.endpoint_by_ip(ip)
        if info is not None:
            if info.identity and not identity:
                ep.identity = info.identity
            ep.namespace = info.namespace
            ep.pod_name = info.pod_name
            ep.labels.extend(info.labels)
            for w in info.workloads:
                ep.workloads.add(name=w.name, kind=w.kind)
            return
        labels = self._enricher.labels_by_identity(identity) if identity else ()
        if labels:
            ep.labels.extend(labels)
        elif identity == IDENTITY_HOST:
            ep.labels.append(RESERVED_HOST)
        elif identity == IDENTITY_WORLD or identity >= IDENTITY_FIRST_CIDR or identity == 0:
            # An address nobody told us about is outside the cluster: label it as Hubble does.
            ep.labels.append(RESERVED_WORLD)
            if not identity:
                ep.identity = IDENTITY_WORLD

    def _fill_policies(self, f: pb.Flow, ev: DatapathEvent, egress: bool) -> None:
        if not ev.rule_id:
            # A default deny: name the policies that isolate the endpoint in this direction.
            if f.verdict in (pb.DROPPED, pb.AUDIT):
                target = f.egress_denied_by if egress else f.ingress_denied_by
                for ref in self._enricher.isolating_policies(ev.endpoint_id, egress):
                    _add_policy(target.add(), ref)
            return
        refs = self._enricher.policies_by_rule(ev.rule_id)
        if not refs:
            return
        if f.verdict == pb.FORWARDED:
            target = f.egress_allowed_by if egress else f.ingress_allowed_by
        elif f.verdict in (pb.DROPPED, pb.AUDIT):
            # Audit: the rule would have denied the flow, so it is listed among the deniers.
            target = f.egress_denied_by if egress else f.ingress_denied_by
        else:
            return
        for ref in refs:
            _add_policy(target.add(), ref)

    def _ifname(self, ifindex: int) -> str:
        name = self._ifnames.get(ifindex)
        if name is None:
            # The datapath's interfaces live in the node's namespace, which need not be ours: ask the
            # enricher (which knows the endpoints' interfaces) before our own namespace.
            name = self._enricher.interface_name(ifindex)
            if name is None:
                try:
                    name = socket.if_indextoname(ifindex) if ifindex else ""
                except OSError:
                    name = ""  # in another namespace, or gone
            if len(self._ifnames) > 4096:
                self._ifnames.clear()
            self._ifnames[ifindex] = name
        return name


def _add_policy(p: pb.Policy, ref: PolicyRef) -> None:
    p.kind = ref.kind
    p.namespace = ref.namespace
    p.name = ref.name
    p.labels.extend(ref.labels)
    p.revision = ref.revision


def _flag_names(bits: int) -> tuple[str, ...]:
    return tuple(name for bit, name in _TCP_FLAG_BITS if bits & bit)


def _summary_for(bits: int) -> str:
    # Hubble's order: SYN first, then FIN, RST, PSH, ACK, ...
    order = ("SYN", "FIN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
    names = set(_flag_names(bits))
    return "TCP Flags: " + ", ".join(n for n in order if n in names) if names else "TCP"


TCP_SUMMARIES = [_summary_for(b) for b in range(256)]  # a TCP flow's Summary by its flag bits
