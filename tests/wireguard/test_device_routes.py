"""The device's routes of remote pods, both families, on this kernel. It has no WireGuard (nor the dummy
driver), so one end of a veth pair named like the device stands in for it: routes, their protocol,
IPv6 on the device and the restart behaviour (found again, only the difference changed) do not depend
on the link's kind."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from meshagent.datapath.wireguard import DEVICE_NAME, ROUTE_PROTOCOL, WireguardDevice
from meshagent.wireguard.updates import DeviceUpdate

pytestmark = pytest.mark.kernel


def _ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def device() -> Iterator[WireguardDevice]:
    netns = f"ma-wgroutes-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        _ip(netns, "link", "add", DEVICE_NAME, "type", "veth", "peer", "name", "mawg0-peer")
        _ip(netns, "link", "set", DEVICE_NAME, "up")
        # The node's own address, which IPv4 routes through the device name as their source.
        _ip(netns, "address", "add", "192.168.254.11/32", "dev", "lo")
        yield WireguardDevice(netns=netns)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)


def test_routes_of_both_families_are_ours_and_found_again(device: WireguardDevice) -> None:
    assert device.netns is not None
    device._enable_ipv6()
    sysctl = Path("/proc/sys/net/ipv6/conf") / DEVICE_NAME
    with subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            device.netns,
            "cat",
            str(sysctl / "disable_ipv6"),
            str(sysctl / "forwarding"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as reader:
        out, _ = reader.communicate()
    assert out.split() == ["0", "1"], "IPv6 on, and forwarding through the device"

    pods = [IPv4Address("10.244.2.10"), IPv6Address("fd00:2::10"), IPv6Address("fd00:2::11")]
    device.apply(DeviceUpdate(add_routes=pods), port=51871, source=IPv4Address("192.168.254.11"))
    # Someone else's route through the device is not ours: never reported, never removed.
    _ip(device.netns, "-6", "route", "add", "fd00:9::1/128", "dev", DEVICE_NAME)
    assert device.routes() == set(pods)
    listed = _ip(device.netns, "-6", "route", "show", "dev", DEVICE_NAME, "proto", str(ROUTE_PROTOCOL))
    assert "fd00:2::10" in listed and "fd00:9::1" not in listed

    # A restarted agent sees the same set and removes only what is gone, of either family.
    again = WireguardDevice(netns=device.netns)
    gone = [IPv6Address("fd00:2::11")]
    again.apply(DeviceUpdate(remove_routes=gone), port=51871, source=None)
    assert again.routes() == {IPv4Address("10.244.2.10"), IPv6Address("fd00:2::10")}
    assert "fd00:9::1" in _ip(device.netns, "-6", "route", "show", "dev", DEVICE_NAME)
    # Removing a route that is already gone is not an error (a pod deleted twice, a restart midway).
    again.apply(DeviceUpdate(remove_routes=gone), port=51871, source=None)
