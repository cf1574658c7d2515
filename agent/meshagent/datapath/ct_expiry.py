"""Expiring idle conntrack entries from user space, and the close events the kernel could not send.

The packet path never deletes an entry (a spoofed packet must not end a connection): closed ones are
removed here after a short idle time. The kernel reports a TCP connection's end when it sees FIN both ways
or an RST in its window; UDP, ICMP and TCP that went quiet
end only when their entry idles out here, and the event for them is made here. The kernel stamps entries
with CLOCK_MONOTONIC, which time.monotonic_ns() also reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.datapath.maps import conntrack, conntrack6
from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import Direction, EndpointEntry, Verdict, user_identity


def expire(
    ct_map: Any,
    *,
    endpoints: Mapping[int, EndpointEntry],
    forgotten: Mapping[int, int],
    timeouts: conntrack.Timeouts,
    now_ns: int,
) -> tuple[list[DatapathEvent], int]:
    """Deletes idle entries (and those of removed endpoints made before their removal, `forgotten`:
    ifindex -> removal time); returns a close event per connection not reported closed already, and how
    many entries were read."""
    closed: list[DatapathEvent] = []
    scanned = 0
    for key, value in ct_map.items():
        scanned += 1
        removed_ns = forgotten.get(key.ifindex)
        if removed_ns is not None and value.created_ns <= removed_ns:
            ct_map.delete(key)  # its endpoint was removed: the number may be another's now
            continue
        idle_s = (now_ns - value.last_seen_ns) / 1e9
        if idle_s <= timeouts.for_entry(key.proto, value.flags, answered=value.packets_rev > 0):
            continue
        if not ct_map.delete(key) or value.flags & conntrack.FLAG_CLOSED:
            continue
        closed.append(_close_event(key, value, endpoints.get(key.ifindex), now_ns))
    return closed, scanned


def _close_event(
    key: conntrack.CTKey | conntrack6.CT6Key,
    value: conntrack.CTValue,
    endpoint: EndpointEntry | None,
    now_ns: int,
) -> DatapathEvent:
    connection = conntrack6.decode_any(key, value)
    return DatapathEvent(
        timestamp_ns=now_ns,
        type=EventType.CONN_CLOSE,
        verdict=Verdict(value.verdict) if value.verdict in (1, 2, 3) else None,
        drop_reason=DropReason.NONE,
        direction=Direction(value.direction & 1),
        endpoint_id=endpoint.endpoint_id if endpoint else 0,
        ifindex=key.ifindex,
        saddr=connection.saddr,
        daddr=connection.daddr,
        sport=key.sport,
        dport=key.dport,
        protocol=key.proto,
        tcp_flags=value.tcp_flags,
        is_reply=False,
        rule_id=value.rule_id,
        src_identity=user_identity(value.src_identity),
        dst_identity=user_identity(value.dst_identity),
        packets_fwd=value.packets_fwd,
        bytes_fwd=value.bytes_fwd,
        packets_rev=value.packets_rev,
        bytes_rev=value.bytes_rev,
    )
