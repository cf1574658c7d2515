"""The agent's encryption worker between the store and the kernel: what it asks of the device and of the
datapath maps for each change (the rig in tests/wireguard/rig.py stands in for the kernel, which has no
WireGuard here; vm-tests/test_wireguard.py runs the same worker against real devices)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from meshagent.agent import encryption as encryption_module
from meshagent.datapath.maps.wireguard import MODE_VALUES
from meshagent.sources.events import Action
from meshagent.wireguard.control import request_mode, request_rotation
from meshagent.wireguard.keys import KeyStore
from meshagent.wireguard.modes import EncryptionMode

from tests.wireguard.rig import REMOTE_KEY, Rig, node, pod, put


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


def _dual_stack_node_2(rig: Rig) -> None:
    put(rig.store, node("node-2", "192.168.254.12", "10.244.2.0/24", REMOTE_KEY, cidr6="fd00:2::/64"))
    put(rig.store, pod("b", "node-2", "10.244.2.10", ipv6="fd00:2::10"))


def test_a_dual_stack_remote_pod_is_routed_and_judged_on_both_families(rig: Rig) -> None:
    _dual_stack_node_2(rig)
    rig.encryption._step()
    (peer,) = rig.device.device_peers.values()
    assert peer.endpoint == "192.168.254.12:51871", "the IPv4 underlay carries the IPv6 pod traffic"
    assert peer.allowed_ips == {IPv4Address("10.244.2.10"), IPv6Address("fd00:2::10")}
    assert rig.device.device_routes == {IPv4Address("10.244.2.10"), IPv6Address("fd00:2::10")}
    assert rig.maps.ranges["node-2"] == (IPv4Network("10.244.2.0/24"), IPv6Network("fd00:2::/64"))
    assert rig.encryption.status()["errors"] == []
    put(rig.store, pod("b", "node-2", "10.244.2.10", ipv6="fd00:2::10"), Action.DELETED)
    rig.encryption._step()
    assert rig.device.device_routes == set(), "both routes of a gone pod go"


def test_ipv6_forwarding_off_is_reported_not_changed(rig: Rig) -> None:
    rig.device.forwards_ipv6 = False
    rig.encryption._step()
    assert rig.encryption.status()["errors"] == [], "no IPv6 pod range anywhere: nothing to say"
    _dual_stack_node_2(rig)
    rig.encryption._step()
    (error,) = rig.encryption.status()["errors"]
    assert "IPv6 forwarding is off" in error
    rig.device.forwards_ipv6 = True
    rig.encryption._step()
    assert rig.encryption.status()["errors"] == []
