"""A recording WireGuard device and datapath maps in place of the kernel (which has no WireGuard here),
and an encryption worker wired to them over a real object store: the worker's unit-test rig."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from meshagent.agent.encryption import Encryption
from meshagent.datapath.maps.wireguard import MODE_VALUES
from meshagent.sources.events import Action, ObjectEvent, SyncEvent
from meshagent.sources.kinds import KINDS, Kind
from meshagent.sources.store import ObjectStore
from meshagent.wireguard.keys import generate_key_pair
from meshagent.wireguard.modes import EncryptionMode
from meshagent.wireguard.peers import PUBLIC_KEY_ANNOTATION, Address
from meshagent.wireguard.updates import DevicePeer, DeviceUpdate, endpoint_text

REMOTE_KEY = generate_key_pair().public_key


@dataclass
class RecordingDevice:
    """The device's interface (meshagent.datapath.wireguard.WireguardDevice), kept in memory."""

    name: str = "mawg0"
    index: int | None = None
    private_key: str | None = None
    port: int | None = None
    mtu: int | None = None
    device_peers: dict[str, DevicePeer] = field(default_factory=dict)
    device_routes: set[Address] = field(default_factory=set)
    created: int = 0
    forwards_ipv6: bool = True  # the node's net.ipv6.conf.all.forwarding

    def ifindex(self) -> int | None:
        return self.index

    def ensure(self, *, private_key: str, port: int, mtu: int) -> int:
        if self.index is None:
            self.created += 1
            self.index = 40 + self.created
        self.private_key, self.port, self.mtu = private_key, port, mtu
        return self.index

    def set_private_key(self, private_key: str, *, port: int | None = None) -> None:
        self.private_key = private_key

    def peers(self) -> dict[str, DevicePeer]:
        return dict(self.device_peers)

    def routes(self) -> set[Address]:
        return set(self.device_routes)

    def ipv6_forwarding(self) -> bool:
        return self.forwards_ipv6

    def apply(self, update: DeviceUpdate, *, port: int, source: Address | None) -> None:
        for change in update.set_peers:
            have = self.device_peers.get(change.peer.public_key)
            ips = (have.allowed_ips if have else frozenset()) | change.add_allowed_ips
            self.device_peers[change.peer.public_key] = DevicePeer(
                change.peer.public_key, endpoint_text(change.peer.endpoint, port), ips
            )
        self.device_routes |= set(update.add_routes)
        self.device_routes -= set(update.remove_routes)
        for key in update.remove_peers:
            del self.device_peers[key]

    def underlay_mtu(self, address: Address) -> int:
        return 1500

    def delete(self) -> bool:
        gone = self.index is not None
        self.index, self.device_peers, self.device_routes = None, {}, set()
        return gone


@dataclass
class RecordingMaps:
    config: tuple[int, int] = (0, 0)
    ranges: dict[str, tuple[IPv4Network | IPv6Network, ...]] = field(default_factory=dict)

    def set_mode(self, mode: str, ifindex: int | None) -> None:
        self.config = (MODE_VALUES[mode], ifindex or 0)

    def mode(self) -> tuple[int, int]:
        return self.config

    def set_remote(self, ranges: Mapping[str, Iterable[IPv4Network | IPv6Network]]) -> None:
        self.ranges = {name: tuple(networks) for name, networks in ranges.items()}


def node(
    name: str, address: str, cidr: str, key: str | None = None, cidr6: str | None = None
) -> dict[str, Any]:
    annotations = {PUBLIC_KEY_ANNOTATION: key} if key else {}
    return {
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr, cidr6] if cidr6 else [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }


def pod(name: str, node_name: str, ip: str, ipv6: str | None = None) -> dict[str, Any]:
    ips = [{"ip": ip}, {"ip": ipv6}] if ipv6 else [{"ip": ip}]
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node_name},
        "status": {"podIP": ip, "podIPs": ips},
    }


def put(store: ObjectStore, obj: dict[str, Any], action: Action = Action.ADDED) -> None:
    namespace = obj["metadata"].get("namespace", "")
    store.apply(ObjectEvent(action, Kind(obj["kind"]), namespace, obj["metadata"]["name"], obj))


@dataclass
class Rig:
    encryption: Encryption
    device: RecordingDevice
    maps: RecordingMaps
    store: ObjectStore
    published: list[str]
    state_dir: Path


def make_rig(tmp_path: Path) -> Rig:
    store = ObjectStore()
    for obj in (
        node("node-1", "192.168.254.11", "10.244.1.0/24"),
        node("node-2", "192.168.254.12", "10.244.2.0/24", REMOTE_KEY),
        node("node-3", "192.168.254.13", "10.244.3.0/24"),
        pod("a", "node-1", "10.244.1.10"),
        pod("b", "node-2", "10.244.2.10"),
    ):
        put(store, obj)
    for info in KINDS:
        store.apply(SyncEvent(info.kind))
    published: list[str] = []
    maps = RecordingMaps()
    encryption = Encryption(
        node="node-1",
        mode=EncryptionMode.PERMISSIVE,
        port=51871,
        mtu=0,
        state_dir=tmp_path / "state",
        netns=None,
        store=store,
        publish_key=published.append,
        maps=maps,  # type: ignore[arg-type]
    )
    device = RecordingDevice()
    encryption.device = device  # type: ignore[assignment]
    return Rig(encryption, device, maps, store, published, tmp_path / "state")
