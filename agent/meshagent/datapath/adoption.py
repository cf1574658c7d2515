"""Which pinned endpoints a starting agent may adopt.

The pinned endpoint map outlives the agent, and so do the interfaces it names, usually. But pods are
deleted while the agent is down, node namespaces are recreated, and interface numbers are reused: the
ifindex an entry names may be gone, or may now belong to another pod's interface. Such an entry must
never be treated as the old endpoint.

The evidence kept by the kernel itself is our tc filters: every endpoint interface we attached to carries
them (by priority, handle and program name) for as long as that interface exists, and a recreated
interface starts without them. So an entry is adopted only when its interface exists and still carries
our programs; an interface that exists without them is a new one that merely got the old number. Whether
the pod's /32 route still leads to the interface is noted (a route can be missing while the CNI is busy),
never a reason to drop enforcement from an interface that still has our programs.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from meshagent.datapath import tc
from meshagent.datapath.netns import iproute
from meshagent.model.kernel_state import EndpointEntry

NETNS_DIR = Path("/run/netns")
RT_TABLE_MAIN = 254


@dataclass(frozen=True)
class StaleEndpoint:
    """A pinned endpoint that no longer exists as it was recorded, and why."""

    ifindex: int
    endpoint_id: int
    ipv4: IPv4Address
    reason: str

    def describe(self) -> str:
        return f"endpoint {self.endpoint_id} ({self.ipv4}, ifindex {self.ifindex}): {self.reason}"


@dataclass(frozen=True)
class AdoptionCheck:
    adopt: dict[int, EndpointEntry]
    stale: list[StaleEndpoint]
    notes: list[str]  # adopted, but something about them looks unusual (logged)


def check_endpoints(endpoints: Mapping[int, EndpointEntry], *, netns: str | None) -> AdoptionCheck:
    """Splits pinned endpoints into those whose interface is still ours and those that are stale."""
    if not endpoints:
        return AdoptionCheck(adopt={}, stale=[], notes=[])
    if netns is not None and not (NETNS_DIR / netns).exists():
        reason = f"the node network namespace {netns} is gone"
        return AdoptionCheck(adopt={}, stale=[_stale(e, reason) for e in endpoints.values()], notes=[])
    with iproute(netns) as ipr:
        links = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        routes = _host_routes(ipr)
        adopt: dict[int, EndpointEntry] = {}
        stale: list[StaleEndpoint] = []
        notes: list[str] = []
        for ifindex, entry in sorted(endpoints.items()):
            ifname = links.get(ifindex)
            if ifname is None:
                stale.append(_stale(entry, "its interface is gone"))
                continue
            ours = {f.parent for f in tc.filters_of(ipr, ifindex) if tc.is_ours(f)}
            if ours != {tc.PARENT_INGRESS, tc.PARENT_EGRESS}:
                stale.append(
                    _stale(
                        entry,
                        f"ifindex {ifindex} is now {ifname}, which does not carry our programs "
                        "(a new interface that got the old number)",
                    )
                )
                continue
            route_oif = routes.get(entry.ipv4)
            # (0.0.0.0: a pod with no IPv4 address, isolated under policy; there is no route to check)
            if route_oif != ifindex and not entry.ipv4.is_unspecified:
                where = links.get(route_oif, f"ifindex {route_oif}") if route_oif else "nowhere"
                notes.append(
                    f"endpoint {entry.endpoint_id} on {ifname}: the route to {entry.ipv4} leads to {where}"
                )
            adopt[ifindex] = entry
    return AdoptionCheck(adopt=adopt, stale=stale, notes=notes)


def _stale(entry: EndpointEntry, reason: str) -> StaleEndpoint:
    return StaleEndpoint(ifindex=entry.ifindex, endpoint_id=entry.endpoint_id, ipv4=entry.ipv4, reason=reason)


def _host_routes(ipr: Any) -> dict[IPv4Address, int]:
    """The /32 routes of the main table: pod address -> outgoing interface."""
    out: dict[IPv4Address, int] = {}
    try:
        for route in ipr.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN):
            dst, oif = route.get_attr("RTA_DST"), route.get_attr("RTA_OIF")
            if route["dst_len"] == 32 and dst and oif:
                out.setdefault(IPv4Address(dst), int(oif))
    except NetlinkError as err:
        if err.code != errno.ENOENT:
            raise
    return out
