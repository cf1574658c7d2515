"""The node's WireGuard device, its peers and the routes that send remote pods' traffic through it,
driven over netlink with pyroute2 (rtnetlink for the link and routes, generic netlink for WireGuard).

The device outlives the agent, like the pinned maps: a restarted agent finds it with its peers and
routes and only changes what differs, so established connections to remote pods never see a gap.
Routes are /32 (IPv4) or /128 (IPv6) per remote pod in the main table; the tunnel's own UDP goes to the
peers' node addresses, which stay routed over the underlay (an IPv4 underlay carries pods' IPv6 inside).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from meshagent.datapath.netns import iproute, open_in_netns
from meshagent.wireguard.peers import Address
from meshagent.wireguard.updates import DevicePeer, DeviceUpdate, address_order, endpoint_text

logger = logging.getLogger(__name__)

DEVICE_NAME = "mawg0"
# What WireGuard adds to each packet: outer IPv4 (20) or IPv6 (40) header, UDP (8), its own header and
# authentication tag (32). 80 leaves room for an IPv6 underlay too.
WIREGUARD_OVERHEAD = 80
# Routes we own carry this protocol number, so a restarted agent tells them from anyone else's.
ROUTE_PROTOCOL = 0xA5
_RT_SCOPE_LINK = 253
_AF_INET = 2
_AF_INET6 = 10


class WireguardError(RuntimeError):
    """The kernel refused a WireGuard or route operation; the message says which and why."""


@dataclass(frozen=True)
class DeviceInfo:
    ifindex: int
    listen_port: int
    public_key: str
    mtu: int


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii")
    return str(value)


def _attr(nla: Any, name: str) -> Any:
    value = nla.get_attr(name)
    if value is None:
        return None
    # Struct-like attributes come back as the attribute itself, their fields inside.
    return value


def _key_of(nla: Any, name: str) -> str | None:
    found = nla.get_attr(name)
    if found is None:
        return None
    if hasattr(found, "get") and found.get("value") is not None:
        return _text(found.get("value"))
    return _text(found)


def _peer_from(nla: Any) -> DevicePeer:
    endpoint = _attr(nla, "WGPEER_A_ENDPOINT")
    handshake = _attr(nla, "WGPEER_A_LAST_HANDSHAKE_TIME")
    allowed: set[Address] = set()
    for entry in nla.get_attr("WGPEER_A_ALLOWEDIPS") or []:
        text = entry.get("addr") if hasattr(entry, "get") else None
        if not text:
            continue
        address, _, prefixlen = text.partition("/")
        found = ip_address(address)
        if prefixlen == str(found.max_prefixlen):  # one pod's address; wider ranges are not ours
            allowed.add(found)
    return DevicePeer(
        public_key=_key_of(nla, "WGPEER_A_PUBLIC_KEY") or "",
        endpoint=endpoint_text(ip_address(endpoint["addr"]), int(endpoint["port"]))
        if endpoint is not None
        else None,
        allowed_ips=frozenset(allowed),
        last_handshake=float(handshake["tv_sec"]) + handshake["tv_nsec"] / 1e9
        if handshake is not None
        else 0.0,
        rx_bytes=int(nla.get_attr("WGPEER_A_RX_BYTES") or 0),
        tx_bytes=int(nla.get_attr("WGPEER_A_TX_BYTES") or 0),
    )


class WireguardDevice:
    """The device `name` in `netns` (None: the agent's own namespace)."""

    def __init__(self, *, netns: str | None, name: str = DEVICE_NAME) -> None:
        self.netns = netns
        self.name = name

    @contextmanager
    def _wg(self) -> Iterator[WireGuard]:
        try:
            socket = open_in_netns(self.netns, WireGuard)
        except NetlinkError as err:
            raise WireguardError(
                f"WireGuard netlink family unavailable (no wireguard module?): {err}"
            ) from err
        with socket:
            yield socket

    @contextmanager
    def _ipr(self) -> Iterator[IPRoute]:
        with iproute(self.netns) as ipr:
            yield ipr

    def ifindex(self) -> int | None:
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=self.name)
        return int(found[0]) if found else None

    def ensure(self, *, private_key: str, port: int, mtu: int) -> int:
        """The device exists, is up, has this key, port and MTU; returns its ifindex. An existing device
        is kept as it is otherwise (its peers carry traffic)."""
        try:
            with self._ipr() as ipr:
                found = ipr.link_lookup(ifname=self.name)
                if not found:
                    ipr.link("add", ifname=self.name, kind="wireguard")
                    found = ipr.link_lookup(ifname=self.name)
                    logger.info("made WireGuard device %s", self.name)
                ifindex = int(found[0])
                ipr.link("set", index=ifindex, mtu=mtu, state="up")
        except NetlinkError as err:
            raise WireguardError(f"cannot set up device {self.name}: {err}") from err
        self._enable_ipv6()
        self.set_private_key(private_key, port=port)
        return ifindex

    def _enable_ipv6(self) -> None:
        """IPv6 on the device, and forwarding through it: routes of pods' IPv6 addresses need both. A node
        whose IPv6 forwarding is off as a whole forwards no pod's IPv6 at all, plaintext or not: that is
        the node's setting (turning it on changes how every interface treats router advertisements), so
        it is only reported."""
        try:
            _write_sysctl(self.netns, f"net/ipv6/conf/{self.name}/disable_ipv6", "0")
            _write_sysctl(self.netns, f"net/ipv6/conf/{self.name}/forwarding", "1")
        except FileNotFoundError:
            # A kernel without IPv6 (ipv6.disable=1), or a device MTU below IPv6's 1280: IPv4 is carried
            # as before, and there is no pod IPv6 this device could carry.
            logger.warning("no IPv6 on %s (kernel without IPv6, or MTU below 1280)", self.name)
        except OSError as err:
            raise WireguardError(f"cannot enable IPv6 on {self.name}: {err}") from err

    def ipv6_forwarding(self) -> bool:
        """Whether the node forwards IPv6 at all (net.ipv6.conf.all.forwarding)."""
        try:
            return _read_sysctl(self.netns, "net/ipv6/conf/all/forwarding") == "1"
        except OSError:
            return False  # no IPv6 in this kernel: nothing to forward

    def set_private_key(self, private_key: str, *, port: int | None = None) -> None:
        try:
            with self._wg() as wg:
                wg.set(self.name, private_key=private_key, listen_port=port)
        except (NetlinkError, ValueError) as err:
            raise WireguardError(f"cannot configure {self.name}: {err}") from err

    def info(self) -> DeviceInfo | None:
        ifindex = self.ifindex()
        if ifindex is None:
            return None
        with self._wg() as wg:
            messages = list(wg.info(self.name))
        with self._ipr() as ipr:
            mtu = int(ipr.get_links(ifindex)[0].get_attr("IFLA_MTU"))
        first = messages[0]
        return DeviceInfo(
            ifindex=ifindex,
            listen_port=int(first.get_attr("WGDEVICE_A_LISTEN_PORT") or 0),
            public_key=_key_of(first, "WGDEVICE_A_PUBLIC_KEY") or "",
            mtu=mtu,
        )

    def peers(self) -> dict[str, DevicePeer]:
        if self.ifindex() is None:
            return {}
        found: dict[str, DevicePeer] = {}
        with self._wg() as wg:
            for message in wg.info(self.name):
                for nla in message.get_attr("WGDEVICE_A_PEERS") or []:
                    peer = _peer_from(nla)
                    have = found.get(peer.public_key)
                    if have is not None:  # a peer with many allowed IPs spans messages
                        peer = DevicePeer(
                            public_key=peer.public_key,
                            endpoint=peer.endpoint or have.endpoint,
                            allowed_ips=have.allowed_ips | peer.allowed_ips,
                            last_handshake=max(peer.last_handshake, have.last_handshake),
                            rx_bytes=max(peer.rx_bytes, have.rx_bytes),
                            tx_bytes=max(peer.tx_bytes, have.tx_bytes),
                        )
                    found[peer.public_key] = peer
        return found

    def routes(self) -> set[Address]:
        """The /32 and /128 routes through the device that we made."""
        ifindex = self.ifindex()
        if ifindex is None:
            return set()
        found: set[Address] = set()
        with self._ipr() as ipr:
            for family in (_AF_INET, _AF_INET6):
                for route in ipr.get_routes(family=family, oif=ifindex, proto=ROUTE_PROTOCOL):
                    dst = route.get_attr("RTA_DST")
                    if not dst:
                        continue
                    address = ip_address(dst)
                    if route["dst_len"] == address.max_prefixlen:
                        found.add(address)
        return found

    def apply(self, update: DeviceUpdate, *, port: int, source: Address | None) -> None:
        """Applies `update` in the order that keeps traffic flowing (see wireguard.updates)."""
        if update.empty:
            return
        ifindex = self.ifindex()
        if ifindex is None:
            raise WireguardError(f"device {self.name} is gone")
        try:
            if update.set_peers:
                self._set_peers(update, port=port)
            with self._ipr() as ipr:
                for ip in update.add_routes:
                    # The node's address as the source of what it sends itself, where the family fits.
                    same_family = source is not None and source.version == ip.version
                    extra = {"prefsrc": str(source)} if same_family else {}
                    ipr.route(
                        "replace",
                        family=_AF_INET6 if ip.version == 6 else _AF_INET,
                        dst=f"{ip}/{ip.max_prefixlen}",
                        oif=ifindex,
                        proto=ROUTE_PROTOCOL,
                        scope=_RT_SCOPE_LINK,
                        **extra,
                    )
                for ip in update.remove_routes:
                    try:
                        ipr.route(
                            "del",
                            family=_AF_INET6 if ip.version == 6 else _AF_INET,
                            dst=f"{ip}/{ip.max_prefixlen}",
                            oif=ifindex,
                            proto=ROUTE_PROTOCOL,
                        )
                    except NetlinkError as err:
                        if err.code != 3:  # ESRCH: already gone
                            raise
            if update.remove_peers:
                with self._wg() as wg:
                    for key in update.remove_peers:
                        wg.set(self.name, peer={"public_key": key, "remove": True})
        except (NetlinkError, ValueError) as err:
            raise WireguardError(f"cannot update {self.name}: {err}") from err

    def _set_peers(self, update: DeviceUpdate, *, port: int) -> None:
        with self._wg() as wg:
            for change in update.set_peers:
                peer: dict[str, Any] = {
                    "public_key": change.peer.public_key,
                    "endpoint_addr": str(change.peer.endpoint),
                    "endpoint_port": port,
                }
                if change.add_allowed_ips:
                    peer["allowed_ips"] = [
                        f"{ip}/{ip.max_prefixlen}" for ip in sorted(change.add_allowed_ips, key=address_order)
                    ]
                wg.set(self.name, peer=peer)

    def underlay_mtu(self, address: Address) -> int:
        """The MTU of the interface the route to `address` (a peer's node) leaves by."""
        with self._ipr() as ipr:
            routes = ipr.route("get", dst=str(address))
            oif = routes[0].get_attr("RTA_OIF")
            return int(ipr.get_links(oif)[0].get_attr("IFLA_MTU"))

    def delete(self) -> bool:
        """Removes the device (its routes go with it); False when there was none."""
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=self.name)
            if not found:
                return False
            ipr.link("del", index=found[0])
        return True


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def _write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Writes a network sysctl of `netns`: /proc/sys/net belongs to the namespace of the thread that opens
    the file, so it is opened inside the namespace and written after."""
    with open_in_netns(netns, lambda: _sysctl_path(key).open("w")) as handle:
        handle.write(value)


def _read_sysctl(netns: str | None, key: str) -> str:
    with open_in_netns(netns, lambda: _sysctl_path(key).open()) as handle:
        return handle.read().strip()
