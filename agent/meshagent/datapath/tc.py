"""Attaching the endpoint programs to an interface with tc (clsact, cls_bpf in direct-action mode).

Attachment is idempotent: our filters have a fixed priority and handle, and `replace` swaps a program in
place, so re-attaching (a restarted agent, a new program version) never stacks a second filter and never
leaves the interface without one. Detaching removes our two filters, and the clsact qdisc only when no
other filter remains on it.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from meshagent.datapath.errors import AttachError
from meshagent.datapath.netns import iproute

logger = logging.getLogger(__name__)

PARENT_INGRESS = 0xFFFFFFF2  # clsact ingress: packets the pod sends (host-side veth receives them)
PARENT_EGRESS = 0xFFFFFFF3  # clsact egress: packets going to the pod
FILTER_PRIO = 1
FILTER_HANDLE = 1


@dataclass(frozen=True)
class Program:
    name: str
    fd: int


@dataclass(frozen=True)
class AttachedFilter:
    parent: int
    name: str


def attach(*, ifindex: int, netns: str | None, from_endpoint: Program, to_endpoint: Program) -> None:
    """Attaches (or replaces) both programs on one interface."""
    try:
        with iproute(netns) as ipr:
            try:
                ipr.tc("add", "clsact", ifindex)
            except NetlinkError as err:
                if err.code != errno.EEXIST:
                    raise
            for parent, program in ((PARENT_INGRESS, from_endpoint), (PARENT_EGRESS, to_endpoint)):
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    ifindex,
                    FILTER_HANDLE,
                    fd=program.fd,
                    name=program.name,
                    parent=parent,
                    prio=FILTER_PRIO,
                    classid=1,
                    direct_action=True,
                )
    except NetlinkError as err:
        raise AttachError(f"attach to ifindex {ifindex} (netns {netns or 'own'}) failed: {err}") from err


def detach(*, ifindex: int, netns: str | None) -> None:
    """Removes our filters; the interface may already be gone (a deleted pod), which is fine."""
    try:
        with iproute(netns) as ipr:
            for parent in (PARENT_INGRESS, PARENT_EGRESS):
                try:
                    ipr.tc("del-filter", "bpf", ifindex, FILTER_HANDLE, parent=parent, prio=FILTER_PRIO)
                except NetlinkError as err:
                    if err.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                        raise
            remaining = [f for p in (PARENT_INGRESS, PARENT_EGRESS) for f in _filters(ipr, ifindex, p)]
            if not remaining:
                try:
                    ipr.tc("del", "clsact", ifindex)
                except NetlinkError as err:
                    if err.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                        raise
    except NetlinkError as err:
        raise AttachError(f"detach from ifindex {ifindex} (netns {netns or 'own'}) failed: {err}") from err


def attached(*, ifindex: int, netns: str | None) -> list[AttachedFilter]:
    """Our filters present on the interface (by priority and handle), with their program names."""
    with iproute(netns) as ipr:
        out = []
        for parent in (PARENT_INGRESS, PARENT_EGRESS):
            for message in _filters(ipr, ifindex, parent):
                if message.get("handle") != FILTER_HANDLE or (message["info"] >> 16) != FILTER_PRIO:
                    continue
                options = message.get_attr("TCA_OPTIONS")
                name = options.get_attr("TCA_BPF_NAME") if options is not None else ""
                out.append(AttachedFilter(parent=parent, name=name or ""))
        return out


def _filters(ipr: IPRoute, ifindex: int, parent: int) -> list[Any]:
    try:
        return list(ipr.get_filters(ifindex, parent=parent))
    except NetlinkError as err:
        if err.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return []
        raise
