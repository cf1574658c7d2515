"""Attaching the endpoint programs to an interface with tc (clsact, cls_bpf in direct-action mode).

Attachment is idempotent: our filters have a fixed priority and handle, and `replace` swaps a program in
place, so re-attaching (a restarted agent, a new program version) never stacks a second filter and never
leaves the interface without one. Detaching removes our two filters, and the clsact qdisc only when no
other filter remains on it.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from meshagent.datapath.errors import AttachError
from meshagent.datapath.netns import iproute

PARENT_INGRESS = 0xFFFFFFF2  # clsact ingress: packets the pod sends (host-side veth receives them)
PARENT_EGRESS = 0xFFFFFFF3  # clsact egress: packets going to the pod
CLSACT_HANDLE = 0xFFFF0000  # shared by clsact and the plain ingress qdisc
FILTER_PRIO = 1
FILTER_HANDLE = 1
# Every program of ours is named with the project's prefix (the tc filter keeps the name): a filter at our
# priority and handle with another name is someone else's and is never removed.
PROGRAM_PREFIX = "ma_"


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
                # The handle is taken: by clsact (ours or shared), or by a plain ingress qdisc, on which
                # both of our hooks would land on the one ingress hook and replace each other.
                kind = _ingress_qdisc_kind(ipr, ifindex)
                if kind != "clsact":
                    raise AttachError(
                        f"attach to ifindex {ifindex} (netns {netns or 'own'}) failed: it has an "
                        f"'{kind}' qdisc where clsact is needed (another tool's?); not attached"
                    ) from err
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
        raise AttachError(
            f"attach to ifindex {ifindex} (netns {netns or 'own'}) failed: {err}",
            interface_gone=err.code == errno.ENODEV,
        ) from err
    except OSError as err:  # entering the node's network namespace failed
        raise AttachError(
            f"attach to ifindex {ifindex} (netns {netns or 'own'}) failed: {err}",
            interface_gone=err.errno == errno.ENOENT,
        ) from err


def detach(*, ifindex: int, netns: str | None) -> bool:
    """Removes our filters; the interface may already be gone (a deleted pod), which is fine. Returns
    whether the interface still existed. A filter at our priority and handle that is not ours is left."""
    try:
        with iproute(netns) as ipr:
            if not link_exists(ipr, ifindex):
                return False
            ours = {f.parent for f in filters_of(ipr, ifindex) if is_ours(f)}
            for parent in (PARENT_INGRESS, PARENT_EGRESS):
                if parent not in ours:
                    continue
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
            return True
    except NetlinkError as err:
        raise AttachError(f"detach from ifindex {ifindex} (netns {netns or 'own'}) failed: {err}") from err
    except OSError as err:  # the node's network namespace itself is gone: so is every interface in it
        if err.errno == errno.ENOENT:
            return False
        raise AttachError(f"detach from ifindex {ifindex} (netns {netns or 'own'}) failed: {err}") from err


def attached(*, ifindex: int, netns: str | None) -> list[AttachedFilter]:
    """Filters at our priority and handle on the interface, with their program names."""
    with iproute(netns) as ipr:
        return filters_of(ipr, ifindex)


def filters_of(ipr: IPRoute, ifindex: int) -> list[AttachedFilter]:
    """Filters at our priority and handle on both hooks of one interface (on an open netlink socket)."""
    out = []
    for parent in (PARENT_INGRESS, PARENT_EGRESS):
        for message in _filters(ipr, ifindex, parent):
            if message.get("handle") != FILTER_HANDLE or (message["info"] >> 16) != FILTER_PRIO:
                continue
            options = message.get_attr("TCA_OPTIONS")
            name = options.get_attr("TCA_BPF_NAME") if options is not None else ""
            out.append(AttachedFilter(parent=parent, name=name or ""))
    return out


def is_ours(found: AttachedFilter) -> bool:
    return found.name.startswith(PROGRAM_PREFIX)


def _ingress_qdisc_kind(ipr: IPRoute, ifindex: int) -> str:
    for qdisc in ipr.get_qdiscs(index=ifindex):
        if qdisc.get("handle") == CLSACT_HANDLE:
            return str(qdisc.get_attr("TCA_KIND"))
    return "unknown"


def link_exists(ipr: IPRoute, ifindex: int) -> bool:
    try:
        ipr.link("get", index=ifindex)
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return False
        raise
    return True


def _filters(ipr: IPRoute, ifindex: int, parent: int) -> list[Any]:
    try:
        return list(ipr.get_filters(ifindex, parent=parent))
    except NetlinkError as err:
        if err.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return []
        raise
