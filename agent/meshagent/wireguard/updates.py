"""From the peers a device has to the peers it should have, in steps that never cut traffic to a pod that
stays: allowed IPs and routes are only ever added for pods that stay, never rewritten.

WireGuard (before Linux 6.15) can drop one allowed IP only by replacing the peer's whole list, which
leaves a moment with no entry for the pods that stay. So a departed pod's address keeps its allowed-IP
entry (its route goes at once, so nothing is sent to it through the device); the entry moves by itself
when the address is given to a pod of another node (WireGuard moves an address to the peer it is added
to), and goes with the peer when the peer goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshagent.wireguard.peers import Address, Peer


def address_order(address: Address) -> tuple[int, int]:
    """A sort key for addresses of both families (Python refuses to compare an IPv4 with an IPv6 one)."""
    return (address.version, int(address))


def endpoint_text(address: Address, port: int) -> str:
    """ "address:port", an IPv6 address in brackets; the device's endpoints are read back in this form."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


@dataclass(frozen=True)
class DevicePeer:
    """A peer as the device reports it."""

    public_key: str
    endpoint: str | None  # endpoint_text()
    allowed_ips: frozenset[Address]
    last_handshake: float = 0.0  # seconds since the epoch, 0: never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class PeerChange:
    peer: Peer
    add_allowed_ips: frozenset[Address]
    endpoint_changed: bool


@dataclass(frozen=True)
class DeviceUpdate:
    set_peers: list[PeerChange] = field(default_factory=list)  # new peers, or more allowed IPs / endpoint
    remove_peers: list[str] = field(default_factory=list)  # public keys
    add_routes: list[Address] = field(default_factory=list)
    remove_routes: list[Address] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.set_peers or self.remove_peers or self.add_routes or self.remove_routes)


def plan_update(
    current: Mapping[str, DevicePeer],
    desired: Mapping[str, Peer],
    current_routes: Iterable[Address],
    *,
    port: int,
) -> DeviceUpdate:
    """Steps from `current` (by public key) to `desired`. Order to apply: set peers, add routes, remove
    routes, remove peers, so that a pod's route never points at the device before its peer covers it."""
    set_peers: list[PeerChange] = []
    for key, peer in sorted(desired.items()):
        have = current.get(key)
        wanted_endpoint = endpoint_text(peer.endpoint, port)
        if have is None:
            set_peers.append(PeerChange(peer, peer.allowed_ips, endpoint_changed=True))
            continue
        missing = peer.allowed_ips - have.allowed_ips
        endpoint_changed = have.endpoint != wanted_endpoint
        if missing or endpoint_changed:
            set_peers.append(PeerChange(peer, frozenset(missing), endpoint_changed))
    remove_peers = sorted(key for key in current if key not in desired)
    wanted_routes: set[Address] = set().union(*(peer.allowed_ips for peer in desired.values()))
    routes = set(current_routes)
    return DeviceUpdate(
        set_peers=set_peers,
        remove_peers=remove_peers,
        add_routes=sorted(wanted_routes - routes, key=address_order),
        remove_routes=sorted(routes - wanted_routes, key=address_order),
    )
