"""Removing everything the agent put in the kernel, from a process that loads nothing.

It works from what exists, not only from what the maps recorded: our tc filters are found on every
interface of the node's network namespace (a map deleted by hand leaves no record of them), recorded
endpoints whose interface is gone are reported as such, and the socket load-balancer's hooks are found
on the cgroup by name. Running it again finds nothing and says so; it fails only if something of ours is
still there afterwards.
"""

from __future__ import annotations

import errno
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from meshagent.datapath import tc
from meshagent.datapath.errors import DatapathError, MapError
from meshagent.datapath.layout import other_layouts
from meshagent.datapath.netns import iproute
from meshagent.datapath.pinned import PinnedMaps
from meshagent.datapath.socklb import uninstall_from

logger = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")


@dataclass
class UninstallReport:
    detached: list[str] = field(default_factory=list)  # interfaces our filters were removed from
    already_gone: list[str] = field(default_factory=list)  # recorded, but nothing of it exists any more
    removed: list[str] = field(default_factory=list)  # pinned maps, socket hooks
    errors: list[str] = field(default_factory=list)  # what is still there

    @property
    def complete(self) -> bool:
        return not self.errors

    @property
    def found_nothing(self) -> bool:
        return not (self.detached or self.removed or self.errors)


def uninstall(
    *, pin_dir: Path, netns: str | None, socket_lb_pin_dir: Path, socket_lb_cgroup: Path | None
) -> UninstallReport:
    report = UninstallReport()
    if socket_lb_cgroup is not None:
        _remove_socket_lb(socket_lb_cgroup, socket_lb_pin_dir, report)
    recorded = _recorded_endpoints(pin_dir, report)
    _remove_filters(netns, recorded, report)
    if pin_dir.exists():
        try:
            shutil.rmtree(pin_dir)
            report.removed.append(f"pinned maps under {pin_dir}")
        except OSError as err:
            report.errors.append(f"cannot remove {pin_dir}: {err}")
    return report


def _remove_socket_lb(cgroup: Path, pin_dir: Path, report: UninstallReport) -> None:
    if not cgroup.exists():
        report.already_gone.append(f"socket load-balancer: cgroup {cgroup} does not exist")
        return
    try:
        hooks = uninstall_from(cgroup, pin_dir=pin_dir)
    except DatapathError as err:
        report.errors.append(f"socket load-balancer on {cgroup}: {err}")
        return
    if hooks:
        report.removed.append(f"{hooks} socket load-balancer hooks from {cgroup}")


def _recorded_endpoints(pin_dir: Path, report: UninstallReport) -> dict[int, str]:
    """ifindex -> what the maps of every layout say about it (for the report)."""
    recorded: dict[int, str] = {}
    for maps_dir in other_layouts(pin_dir, current=""):
        try:
            with PinnedMaps(maps_dir) as maps:
                for ifindex, entry in maps.state()[0].items():
                    recorded[ifindex] = f"endpoint {entry.endpoint_id} ({entry.ipv4}, ifindex {ifindex})"
        except MapError as err:
            logger.warning("maps in %s unreadable (%s): removing them anyway", maps_dir, err)
    return recorded


def _remove_filters(netns: str | None, recorded: dict[int, str], report: UninstallReport) -> None:
    if netns is not None and not (NETNS_DIR / netns).exists():
        report.already_gone.extend(f"{what}: node namespace {netns} is gone" for what in recorded.values())
        return
    try:
        with iproute(netns) as ipr:
            links = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
            ours = [i for i in sorted(links) if any(tc.is_ours(f) for f in tc.filters_of(ipr, i))]
    except OSError as err:
        if err.errno == errno.ENOENT:  # the namespace went away meanwhile
            report.already_gone.extend(recorded.values())
            return
        report.errors.append(f"cannot read interfaces of netns {netns or '(own)'}: {err}")
        return
    for ifindex, what in recorded.items():
        if ifindex not in links:
            report.already_gone.append(f"{what}: interface gone")
        elif ifindex not in ours:
            report.already_gone.append(f"{what}: ifindex now {links[ifindex]}, without our programs")
    for ifindex in ours:
        try:
            tc.detach(ifindex=ifindex, netns=netns)
            report.detached.append(f"{links[ifindex]} (ifindex {ifindex})")
        except DatapathError as err:
            report.errors.append(str(err))
