"""Local endpoint discovery: which host-side interface leads to a pod's IP.

With routed veths (as Calico and Cilium set them up) the node has a /32 route per pod,
`<podIP> dev <host-veth> scope link`, in its main table (a /128 for a pod known by an
IPv6 address). That interface is where the agent attaches the pod's programs. Until the
CNI has created the route and both ends of the veth are up, the pod's network is "not up
yet" and the caller retries.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshagent.datapath.netns import iproute

logger = logging.getLogger(__name__)

RT_TABLE_MAIN = 254
RTN_UNICAST = 1
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000  # carrier: for a veth, the peer end is up too


PodAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def pod_address(value: str | PodAddress) -> PodAddress:
    return (
        value
        if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address)
        else ipaddress.ip_address(value)
    )


@dataclass(frozen=True)
class PodInterface:
    ifname: str
    ifindex: int


@dataclass(frozen=True)
class NotUpYet:
    reason: str


class DiscoveryError(Exception):
    """The node's network namespace could not be read (not a 'not up yet' condition)."""


def find_pod_interface(pod_ip: str | PodAddress, *, netns: str | None = None) -> PodInterface | NotUpYet:
    """The host-side interface of the host route (/32 or /128) to `pod_ip` in the network namespace
    `netns` (a name under /run/netns; None = the agent's own), or why it is not usable yet."""
    ip = pod_address(pod_ip)
    return find_pod_interfaces([ip], netns=netns)[ip]


def find_pod_interfaces(
    pod_ips: Iterable[str | PodAddress], *, netns: str | None = None
) -> dict[PodAddress, PodInterface | NotUpYet]:
    """find_pod_interface for many pods from one dump of routes and links (one netlink round
    trip per node refresh and address family, not per pod)."""
    wanted = {pod_address(ip) for ip in pod_ips}
    families = [(socket.AF_INET, 32)] + (
        [(socket.AF_INET6, 128)] if any(ip.version == 6 for ip in wanted) else []
    )
    try:
        with iproute(netns) as ipr:
            routes: dict[PodAddress, Any] = {}
            for family, host_len in families:
                for r in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
                    dst = r.get_attr("RTA_DST")
                    if r["dst_len"] == host_len and r["type"] == RTN_UNICAST and dst:
                        routes.setdefault(ipaddress.ip_address(dst), r)
            links = {int(link["index"]): link for link in ipr.get_links()} if routes.keys() & wanted else {}
    except OSError as err:
        raise DiscoveryError(f"reading routes in netns {netns or '(own)'}: {err}") from err
    return {ip: _resolve(ip, routes.get(ip), links) for ip in wanted}


def _resolve(ip: PodAddress, route: Any, links: dict[int, Any]) -> PodInterface | NotUpYet:
    if route is None:
        return NotUpYet(f"no /{ip.max_prefixlen} route to {ip}")
    gateway = route.get_attr("RTA_GATEWAY")
    if gateway:
        return NotUpYet(f"route to {ip} goes via gateway {gateway}, not to a local veth")
    oif = route.get_attr("RTA_OIF")
    link = links.get(int(oif)) if oif else None
    if link is None:
        return NotUpYet(f"the route to {ip} names no existing interface")
    ifname = str(link.get_attr("IFLA_IFNAME"))
    flags = int(link["flags"])
    if not flags & IFF_UP:
        return NotUpYet(f"{ifname} is down")
    if not flags & IFF_LOWER_UP:
        return NotUpYet(f"{ifname} has no carrier (the pod's end is not up)")
    return PodInterface(ifname, int(link["index"]))


class EndpointInterfaces:
    """Per-endpoint interface state for the local pods, refreshed on demand.

    The caller (the agent's endpoint manager) calls `refresh` with the local pods' IPs
    whenever pods change and periodically while some are not up yet; `changed` tells which
    endpoints need (re)attaching or detaching.
    """

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns
        self._states: dict[str, PodInterface | NotUpYet] = {}

    @property
    def states(self) -> dict[str, PodInterface | NotUpYet]:
        return dict(self._states)

    def pending(self) -> list[str]:
        """Endpoints whose network is not up yet (worth a retry)."""
        return sorted(k for k, v in self._states.items() if isinstance(v, NotUpYet))

    def refresh(self, pods: Mapping[str, str | PodAddress]) -> dict[str, PodInterface | NotUpYet]:
        """Resolve every pod (key -> address); returns the endpoints whose state changed (removed
        pods are dropped without being reported)."""
        found = find_pod_interfaces(pods.values(), netns=self.netns)
        states = {key: found[pod_address(ip)] for key, ip in pods.items()}
        changed = {k: v for k, v in states.items() if self._states.get(k) != v}
        for key, state in changed.items():
            logger.info("endpoint %s: %s", key, state)
        self._states = states
        return changed


def wait_for_pod_interface(
    pod_ip: str | PodAddress, *, netns: str | None = None, timeout: float, interval: float = 0.2
) -> PodInterface | NotUpYet:
    """find_pod_interface, retried until it answers an interface or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        found = find_pod_interface(pod_ip, netns=netns)
        if isinstance(found, PodInterface) or time.monotonic() >= deadline:
            return found
        time.sleep(interval)
