"""Builds Hubble-compatible `flow.Flow` messages from datapath events plus metadata from an `Enricher`."""

from __future__ import annotations

import logging
import os
import socket
import threading
from ipaddress import IPv4Address

from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import (
    IDENTITY_FIRST_CIDR,
    IDENTITY_HOST,
    IDENTITY_WORLD,
    Direction,
    Verdict,
)
from meshagent.observer.clock import WallClock
from meshagent.observer.enrich import Enricher, PolicyRef
from meshagent.observer.proto.flow import flow_pb2 as pb

logger = logging.getLogger(__name__)

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

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_SCTP = 1, 6, 17, 132


def tcp_flag_names(bits: int) -> list[str]:
    return [name for bit, name in _TCP_FLAG_BITS if bits & bit]


class _UuidSource:
    """Unique flow ids, cheap: a random per-process prefix plus a counter, in UUID text form."""

    def __init__(self) -> None:
        r = os.urandom(10).hex()
        self._prefix = f"{r[0:8]}-{r[8:12]}-4{r[13:16]}-{'89ab'[int(r[16], 16) & 3]}{r[17:20]}-"
        self._lock = threading.Lock()
        self._n = 0

    def next(self) -> str:
        with self._lock:
            self._n += 1
            n = self._n
        return f"{self._prefix}{n:012x}"


class FlowBuilder:
    """Turns one DatapathEvent into one flow.Flow. Thread-safe for a single caller at a time per instance."""

    def __init__(self, *, enricher: Enricher, node_name: str, clock: WallClock | None = None) -> None:
        self._enricher = enricher
        self._node_name = node_name
        self._clock = clock or WallClock()
        self._uuids = _UuidSource()
        self._ifnames: dict[int, str] = {}

    @property
    def node_name(self) -> str:
        return self._node_name

    def build(self, ev: DatapathEvent) -> pb.Flow:
        wall_ns = self._clock.to_wall_ns(ev.timestamp_ns)
        f = pb.Flow()
        f.time.seconds, f.time.nanos = divmod(wall_ns, 1_000_000_000)
        f.uuid = self._uuids.next()
        f.node_name = self._node_name
        f.Type = pb.L3_L4
        f.IP.source = str(ev.saddr)
        f.IP.destination = str(ev.daddr)
        f.IP.ipVersion = pb.IPv4
        self._fill_l4(f, ev)
        self._fill_verdict(f, ev)
        egress = ev.direction == Direction.EGRESS
        f.traffic_direction = pb.EGRESS if egress else pb.INGRESS
        f.trace_observation_point = pb.FROM_ENDPOINT if egress else pb.TO_ENDPOINT
        f.is_reply.value = ev.is_reply
        f.reply = ev.is_reply
        f.interface.index = ev.ifindex
        f.interface.name = self._ifname(ev.ifindex)
        self._fill_endpoint(f.source, ev.saddr, ev.src_identity, ev.endpoint_id if egress else 0)
        self._fill_endpoint(f.destination, ev.daddr, ev.dst_identity, 0 if egress else ev.endpoint_id)
        self._fill_services(f, ev)
        self._fill_policies(f, ev, egress)
        f.Summary = _summary(f)
        return f

    def _fill_l4(self, f: pb.Flow, ev: DatapathEvent) -> None:
        if ev.protocol == PROTO_TCP:
            tcp = f.l4.TCP
            tcp.source_port = ev.sport
            tcp.destination_port = ev.dport
            flags = tcp.flags
            bits = ev.tcp_flags
            # Always touch `flags` so the message is present even with no bit set (Hubble does the same).
            flags.FIN = bool(bits & 0x01)
            flags.SYN = bool(bits & 0x02)
            flags.RST = bool(bits & 0x04)
            flags.PSH = bool(bits & 0x08)
            flags.ACK = bool(bits & 0x10)
            flags.URG = bool(bits & 0x20)
            flags.ECE = bool(bits & 0x40)
            flags.CWR = bool(bits & 0x80)
        elif ev.protocol == PROTO_UDP:
            f.l4.UDP.source_port = ev.sport
            f.l4.UDP.destination_port = ev.dport
        elif ev.protocol == PROTO_SCTP:
            f.l4.SCTP.source_port = ev.sport
            f.l4.SCTP.destination_port = ev.dport
        elif ev.protocol == PROTO_ICMP:
            # The event carries no ICMP type/code fields; the message marks the flow as ICMPv4.
            f.l4.ICMPv4.SetInParent()

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
        else:  # CONN_CLOSE and anything newer: a trace of a tracked connection
            f.event_type.type = MESSAGE_TYPE_TRACE
            f.verdict = pb.FORWARDED
            f.trace_reason = pb.ESTABLISHED
        if f.verdict == pb.DROPPED:
            f.drop_reason_desc = drop  # type: ignore[assignment]
            f.drop_reason = drop

    def _fill_endpoint(self, ep: pb.Endpoint, ip: IPv4Address, identity: int, endpoint_id: int) -> None:
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

    def _fill_services(self, f: pb.Flow, ev: DatapathEvent) -> None:
        dst = self._enricher.service_by_addr(ev.daddr, ev.dport, ev.protocol)
        if dst is not None:
            f.destination_service.name = dst.name
            f.destination_service.namespace = dst.namespace
        src = self._enricher.service_by_addr(ev.saddr, ev.sport, ev.protocol)
        if src is not None:
            f.source_service.name = src.name
            f.source_service.namespace = src.namespace

    def _fill_policies(self, f: pb.Flow, ev: DatapathEvent, egress: bool) -> None:
        if not ev.rule_id:
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


def _summary(f: pb.Flow) -> str:
    which = f.l4.WhichOneof("protocol")
    if which == "TCP":
        names = tcp_flag_names_from_msg(f.l4.TCP.flags)
        return "TCP Flags: " + ", ".join(names) if names else "TCP"
    if which == "UDP":
        return "UDP"
    if which == "SCTP":
        return "SCTP"
    if which == "ICMPv4":
        return "ICMPv4"
    return "IPv4"


def tcp_flag_names_from_msg(flags: pb.TCPFlags) -> list[str]:
    return [n for n in ("SYN", "FIN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS") if getattr(flags, n)]
