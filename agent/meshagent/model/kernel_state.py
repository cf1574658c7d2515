"""What the kernel should hold, as pure values: the contract between the compilers and the datapath.

The policy and service compilers produce these; `meshagent.datapath` translates them into map entries in
one place (the per-map modules under `meshagent.datapath.maps`). Everything here is in host byte order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

# Where the kernel state lives between runs: the maps pinned on bpffs (a restarted agent adopts them).
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/meshagent")

# Reserved numeric identities (the datapath knows these numbers too: bpf/lib/identity.h).
IDENTITY_ANY = 0  # wildcard in a policy entry: any peer
IDENTITY_HOST = 1  # the node itself
IDENTITY_WORLD = 2  # an address the ipcache does not know
IDENTITY_FIRST_LABELS = 256  # first identity allocated for a set of labels
IDENTITY_FIRST_CIDR = 1 << 24  # first identity allocated for a CIDR peer (ipBlock)
# Set on a pod identity for its pods' IPv6 addresses in the ipcache, so that policy entries can tell a
# pod's IPv6 traffic from its IPv4 traffic: an ipBlock matches addresses, one family at a time. No
# allocated identity reaches this bit (labels end below IDENTITY_FIRST_CIDR, CIDRs far below 1 << 30).
# Internal to the policy map: decoders clear it, so users only ever see the pod's identity.
IDENTITY_FAMILY6_BIT = 1 << 30


def family6_identity(identity: int) -> int:
    """The identity a pod identity's IPv6 addresses carry in the ipcache."""
    return identity | IDENTITY_FAMILY6_BIT


def is_family6_identity(identity: int) -> bool:
    return bool(identity & IDENTITY_FAMILY6_BIT)


def user_identity(identity: int) -> int:
    """The identity as users know it: the pod's, whichever of its addresses the packet used."""
    return identity & ~IDENTITY_FAMILY6_BIT


RULE_ID_NONE = 0  # no rule matched: a default verdict


class Direction(enum.IntEnum):
    """Direction relative to the endpoint (pod): INGRESS is traffic towards the pod."""

    INGRESS = 0
    EGRESS = 1


class Action(enum.IntEnum):
    ALLOW = 1
    DENY = 2


class Protocol(enum.IntEnum):
    ANY = 0
    ICMP = 1
    TCP = 6
    UDP = 17
    SCTP = 132


class Verdict(enum.IntEnum):
    """Verdict on a new connection (mirrors MA_VERDICT_* in bpf/lib/events.h)."""

    ALLOWED = 1
    DENIED = 2
    AUDITED = 3  # would have been denied; passed because of audit mode


@dataclass(frozen=True, order=True)
class PolicyEntry:
    """One rule for one endpoint: (peer identity, protocol, destination port range) in a direction.

    peer_identity IDENTITY_ANY, protocol ANY and port range 0..0 are wildcards. A port range needs a
    protocol. `audit` on a DENY entry lets the connection pass, reported as audited.
    """

    endpoint_id: int
    direction: Direction
    peer_identity: int
    protocol: Protocol
    port_lo: int
    port_hi: int
    action: Action
    rule_id: int
    audit: bool = False

    def __post_init__(self) -> None:
        if not (0 <= self.port_lo <= self.port_hi <= 0xFFFF):
            raise ValueError(f"bad port range {self.port_lo}-{self.port_hi}")
        if self.protocol == Protocol.ANY and (self.port_lo, self.port_hi) != (0, 0):
            raise ValueError("a port range needs a protocol")
        if self.port_lo == 0 and self.port_hi != 0:
            raise ValueError("port range must start at 1 (0..0 means any port)")

    @property
    def any_port(self) -> bool:
        return self.port_lo == 0 and self.port_hi == 0


@dataclass(frozen=True)
class EndpointEntry:
    """A local pod as the datapath sees it: its host-side interface, identity and enforcement."""

    ifindex: int
    endpoint_id: int
    identity: int
    ipv4: IPv4Address
    enforce_ingress: bool = False
    enforce_egress: bool = False
    audit_ingress: bool = False
    audit_egress: bool = False
    # Held fail-closed by the datapath (never in a compiled state): one of its deny rules, or an identity,
    # could not be written, so no new connection passes whatever its rules in the map allow.
    isolated: bool = False
    # The pod's IPv6 address: the only IPv6 source it may use. None: it has none, and may send IPv6 only
    # on its link. (ipv4 is 0.0.0.0 for a pod with no IPv4 address: every IPv4 source is then spoofed.)
    ipv6: IPv6Address | None = None


@dataclass(frozen=True)
class IPCacheEntry:
    """An address or prefix (of either family) and the identity of whatever holds it. Ordered IPv4
    first (networks of two families do not compare)."""

    cidr: IPv4Network | IPv6Network
    identity: int

    def _order(self) -> tuple[int, int, int, int]:
        return (self.cidr.version, int(self.cidr.network_address), self.cidr.prefixlen, self.identity)

    def __lt__(self, other: IPCacheEntry) -> bool:
        return self._order() < other._order()


@dataclass(frozen=True)
class KernelState:
    """Everything the policy datapath needs; applied to the maps as a diff."""

    endpoints: frozenset[EndpointEntry] = field(default_factory=frozenset)
    ipcache: frozenset[IPCacheEntry] = field(default_factory=frozenset)
    policy: frozenset[PolicyEntry] = field(default_factory=frozenset)
