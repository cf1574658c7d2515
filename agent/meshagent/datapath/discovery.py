"""Local endpoint discovery: which host-side interface leads to a pod's IP.

With routed veths (as Calico and Cilium set them up) the node has a /32 route per pod,
`<podIP> dev <host-veth> scope link`, in its main table. That interface is where the
agent attaches the pod's programs. Until the CNI has created the route and both ends
of the veth are up, the pod's network is "not up yet" and the caller retries.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

from pyroute2 import IPRoute

logger = logging.getLogger(__name__)

RT_TABLE_MAIN = 254
RTN_UNICAST = 1
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000  # carrier: for a veth, the peer end is up too


@dataclass(frozen=True)
class PodInterface:
    ifname: str
    ifindex: int


@dataclass(frozen=True)
class NotUpYet:
    reason: str


class DiscoveryError(Exception):
    """The node's network namespace could not be read (not a 'not up yet' condition)."""


def find_pod_interface(
    pod_ip: str | ipaddress.IPv4Address, *, netns: str | None = None
) -> PodInterface | NotUpYet:
    """The host-side interface of the /32 route to `pod_ip` in the network namespace `netns`
    (a name under /run/netns; None = the agent's own), or why it is not usable yet."""
    ip = ipaddress.IPv4Address(str(pod_ip))
    try:
        with IPRoute(netns=netns) as ipr:
            routes = [
                r
                for r in ipr.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN)
                if r["dst_len"] == 32 and r.get_attr("RTA_DST") == str(ip) and r["type"] == RTN_UNICAST
            ]
            if not routes:
                return NotUpYet(f"no /32 route to {ip}")
            route = routes[0]
            gateway = route.get_attr("RTA_GATEWAY")
            if gateway:
                return NotUpYet(f"route to {ip} goes via gateway {gateway}, not to a local veth")
            oif = route.get_attr("RTA_OIF")
            if not oif:
                return NotUpYet(f"route to {ip} names no interface")
            links = ipr.get_links(oif)
    except OSError as err:
        raise DiscoveryError(f"reading routes in netns {netns or '(own)'}: {err}") from err
    if not links:
        return NotUpYet(f"interface {oif} of the route to {ip} is gone")
    link = links[0]
    ifname = str(link.get_attr("IFLA_IFNAME"))
    flags = int(link["flags"])
    if not flags & IFF_UP:
        return NotUpYet(f"{ifname} is down")
    if not flags & IFF_LOWER_UP:
        return NotUpYet(f"{ifname} has no carrier (the pod's end is not up)")
    return PodInterface(ifname, int(link["index"]))


def wait_for_pod_interface(
    pod_ip: str | ipaddress.IPv4Address, *, netns: str | None = None, timeout: float, interval: float = 0.2
) -> PodInterface | NotUpYet:
    """find_pod_interface, retried until it answers an interface or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        found = find_pod_interface(pod_ip, netns=netns)
        if isinstance(found, PodInterface) or time.monotonic() >= deadline:
            return found
        time.sleep(interval)
