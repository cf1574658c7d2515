"""The agent's encryption worker between the store and the kernel: what it asks of the device and of the
datapath maps for each change (a recording device and maps stand in for the kernel, which has no
WireGuard here; vm-tests/test_wireguard.py runs the same worker against real devices)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from meshagent.agent import encryption as encryption_module
from meshagent.agent.encryption import Encryption
from meshagent.datapath.maps.wireguard import MODE_VALUES
from meshagent.sources.events import Action, ObjectEvent, SyncEvent
from meshagent.sources.kinds import KINDS, Kind
from meshagent.sources.store import ObjectStore
from meshagent.wireguard.control import request_mode, request_rotation
from meshagent.wireguard.keys import KeyStore, generate_key_pair
from meshagent.wireguard.modes import EncryptionMode
from meshagent.wireguard.peers import PUBLIC_KEY_ANNOTATION
from meshagent.wireguard.updates import DevicePeer, DeviceUpdate

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
    device_routes: set[IPv4Address] = field(default_factory=set)
    created: int = 0

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

    def routes(self) -> set[IPv4Address]:
        return set(self.device_routes)

    def apply(self, update: DeviceUpdate, *, port: int, source: IPv4Address | None) -> None:
        for change in update.set_peers:
            have = self.device_peers.get(change.peer.public_key)
            ips = (have.allowed_ips if have else frozenset()) | change.add_allowed_ips
            self.device_peers[change.peer.public_key] = DevicePeer(
                change.peer.public_key, f"{change.peer.endpoint}:{port}", ips
            )
        self.device_routes |= set(update.add_routes)
        self.device_routes -= set(update.remove_routes)
        for key in update.remove_peers:
            del self.device_peers[key]

    def underlay_mtu(self, address: IPv4Address) -> int:
        return 1500

    def delete(self) -> bool:
        gone = self.index is not None
        self.index, self.device_peers, self.device_routes = None, {}, set()
        return gone


@dataclass
class RecordingMaps:
    config: tuple[int, int] = (0, 0)
    ranges: dict[str, tuple[IPv4Network, ...]] = field(default_factory=dict)

    def set_mode(self, mode: str, ifindex: int | None) -> None:
        self.config = (MODE_VALUES[mode], ifindex or 0)

    def mode(self) -> tuple[int, int]:
        return self.config

    def set_remote(self, ranges: dict[str, tuple[IPv4Network, ...]]) -> None:
        self.ranges = dict(ranges)


def node(name: str, address: str, cidr: str, key: str | None = None) -> dict[str, Any]:
    annotations = {PUBLIC_KEY_ANNOTATION: key} if key else {}
    return {
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": cidr},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }


def pod(name: str, node_name: str, ip: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node_name},
        "status": {"podIP": ip},
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


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
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


def test_permissive_sets_up_device_peers_routes_and_the_datapath(rig: Rig) -> None:
    rig.encryption._step()
    key = KeyStore(rig.state_dir).load()
    assert rig.device.private_key == key.private_key and rig.device.port == 51871
    assert rig.device.mtu == 1500 - 80
    assert rig.published == [key.public_key]
    (peer,) = rig.device.device_peers.values()
    assert (peer.public_key, peer.endpoint) == (REMOTE_KEY, "192.168.254.12:51871")
    assert peer.allowed_ips == {IPv4Address("10.244.2.10")}
    assert rig.device.device_routes == {IPv4Address("10.244.2.10")}
    assert rig.maps.config == (MODE_VALUES["permissive"], rig.device.index)
    # Every remote node's range goes to the datapath, with a key or not (node-3 is judged in strict mode).
    assert set(rig.maps.ranges) == {"node-2", "node-3"}
    status = rig.encryption.status()
    assert status["plaintext_nodes"] == ["node-3"] and status["peers"][0]["node"] == "node-2"


def test_a_new_remote_pod_is_added_and_a_gone_one_loses_its_route(rig: Rig) -> None:
    rig.encryption._step()
    put(rig.store, pod("c", "node-2", "10.244.2.11"))
    rig.encryption._step()
    assert rig.device.device_routes == {IPv4Address("10.244.2.10"), IPv4Address("10.244.2.11")}
    put(rig.store, pod("b", "node-2", "10.244.2.10"), Action.DELETED)
    rig.encryption._step()
    assert rig.device.device_routes == {IPv4Address("10.244.2.11")}


def test_mode_switches_at_run_time(rig: Rig) -> None:
    rig.encryption._step()
    request_mode(rig.state_dir, EncryptionMode.STRICT)
    rig.encryption._step()
    assert rig.maps.config == (MODE_VALUES["strict"], rig.device.index)
    assert rig.encryption.status()["mode"] == "strict"
    request_mode(rig.state_dir, EncryptionMode.OFF)
    rig.encryption._step()
    assert rig.maps.config == (MODE_VALUES["off"], 0), "the datapath stops judging before the device goes"
    assert rig.device.index is None
    request_mode(rig.state_dir, EncryptionMode.PERMISSIVE)
    rig.encryption._step()
    assert rig.device.index is not None and rig.device.created == 2
    assert REMOTE_KEY in rig.device.device_peers, "peers come back with the device"


def test_a_garbled_mode_request_keeps_the_mode_in_force(rig: Rig) -> None:
    request_mode(rig.state_dir, EncryptionMode.STRICT)
    rig.encryption._step()
    (rig.state_dir / "encryption-mode").write_text("sometimes\n")
    rig.encryption._step()
    assert rig.maps.config[0] == MODE_VALUES["strict"]
    assert "run-time mode request ignored" in rig.encryption.status()["errors"][0]


def test_rotation_sets_and_publishes_a_new_key(rig: Rig) -> None:
    rig.encryption._step()
    old = KeyStore(rig.state_dir).load()
    request_rotation(rig.state_dir)
    rig.encryption._step()
    new = KeyStore(rig.state_dir).load()
    assert new.public_key != old.public_key
    assert rig.device.private_key == new.private_key
    assert rig.published == [old.public_key, new.public_key]
    assert rig.encryption.status()["rotations"] == 1
    rig.encryption.request_rotation()  # the signal's way
    rig.encryption._step()
    assert rig.encryption.status()["rotations"] == 2


def test_a_refused_key_is_offered_again(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []

    def refuse_once(key: str) -> None:
        attempts.append(key)
        if len(attempts) == 1:
            raise RuntimeError("HTTP 503")

    rig.encryption.publish_key = refuse_once
    monkeypatch.setattr(encryption_module, "PUBLISH_RETRY_SECONDS", 0.0)
    rig.encryption._step()
    assert "cannot publish the public key: HTTP 503" in rig.encryption.status()["errors"]
    rig.encryption._step()
    rig.encryption._step()
    assert len(attempts) == 2, "offered again once, then no more: the Node carries it"
