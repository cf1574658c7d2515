"""Datapath events as typed Python values (decoded from bpf/lib/events.h records)."""

from __future__ import annotations

import enum
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from meshagent.model.kernel_state import Direction, Verdict


class EventType(enum.IntEnum):
    POLICY_VERDICT = 1  # first packet of a new connection was evaluated
    DROP = 2  # a packet was dropped
    CONN_CLOSE = 3  # a tracked connection closed (FIN both ways, RST) or was reaped
    TRANSLATED = 4  # the socket load-balancer sent a connection for a Service to a backend (or refused it)


class DropReason(enum.IntEnum):
    """Mirrors MA_DROP_* in bpf/lib/events.h; 0 means forwarded (used by the metrics map)."""

    NONE = 0
    POLICY_DENIED = 1  # a deny rule matched
    POLICY_DEFAULT_DENY = 2  # endpoint isolated and no rule allowed
    SPOOFED_SOURCE = 3  # left a pod with a source IP that is not the pod's
    MALFORMED = 4  # truncated or invalid headers
    CT_FULL = 5  # the conntrack map refused a new entry
    FRAG_NO_FIRST = 6  # a non-first fragment whose first fragment was not seen
    IPV6_UNSUPPORTED = 7  # IPv6 with no IPv6 program to judge it (ma_ipv6_progs empty): fail closed
    UNKNOWN_L4 = 8  # reserved: not emitted (policies match any IP protocol by number)
    ETHERTYPE = 9  # neither IPv4, ARP nor IPv6 (802.1Q, QinQ, ...) to or from a pod under policy
    NO_ENDPOINT = 10  # our programs on an interface whose endpoint entry could not be written: fail closed
    ISOLATED = 11  # a new connection of an endpoint held fail-closed: one of its denies could not be written
    UNENCRYPTED = 20  # strict encryption: pod traffic to or from a remote node that is not encrypted


class DatapathEvent(NamedTuple):
    """One record from the datapath's ring buffer.

    A named tuple rather than a frozen dataclass: the ring-buffer reader makes one per event, up to 100k a
    second, and a tuple is built in one C call where a frozen dataclass stores each of its 21 fields
    through object.__setattr__ (three to four times the cost). Immutable either way; `_replace` makes a
    changed copy."""

    timestamp_ns: int  # CLOCK_MONOTONIC (bpf_ktime_get_ns)
    type: EventType
    verdict: Verdict | None
    drop_reason: DropReason
    direction: Direction
    endpoint_id: int
    ifindex: int
    saddr: IPv4Address | IPv6Address
    daddr: IPv4Address | IPv6Address
    sport: int
    dport: int
    protocol: int
    tcp_flags: int
    is_reply: bool
    rule_id: int
    src_identity: int
    dst_identity: int
    packets_fwd: int = 0
    bytes_fwd: int = 0
    packets_rev: int = 0
    bytes_rev: int = 0
    # TCP without SYN of a connection conntrack did not know (its entry lost, or crafted): judged by policy
    # like a new connection, and flagged so.
    midstream: bool = False
    icmp_type: int = 0  # ICMP only
    icmp_code: int = 0
    # Crossed between nodes through the WireGuard device (bpf/lib/wireguard.h).
    encrypted: bool = False
