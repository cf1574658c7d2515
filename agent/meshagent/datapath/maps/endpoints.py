"""ma_endpoints: host-side interface of a local pod -> endpoint id, identity, address, enforcement.

ma_endpoints6 holds the pod's IPv6 address under the same key (the only IPv6 source it may use); a pod
without one has no entry there. `encode` gives both values; EndpointMaps writes them as one."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from meshagent.datapath.maps.ipcache import Addr6, addr6_from_net, addr6_to_net, addr_from_net, addr_to_net
from meshagent.model.kernel_state import EndpointEntry

MAP_NAME = "ma_endpoints"
MAP_NAME6 = "ma_endpoints6"

# MA_EP_* in bpf/lib/types.h
ENFORCE_INGRESS = 0x01
ENFORCE_EGRESS = 0x02
AUDIT_INGRESS = 0x04
AUDIT_EGRESS = 0x08
ISOLATED = 0x10


class EndpointKey(ctypes.Structure):
    """Must match struct ma_endpoint_key in bpf/lib/types.h."""

    _fields_ = [("ifindex", ctypes.c_uint32)]


class EndpointValue(ctypes.Structure):
    """Must match struct ma_endpoint_value in bpf/lib/types.h."""

    _fields_ = [
        ("endpoint_id", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("addr_net", ctypes.c_uint32),  # network order
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class Endpoint6Value(ctypes.Structure):
    """Must match struct ma_endpoint6_value in bpf/lib/types6.h."""

    _fields_ = [("addr_net", Addr6)]


C_FIELD_NAMES = {"addr_net": "addr"}


@dataclass
class EndpointValues:
    """What one endpoint has in ma_endpoints and (when it has an IPv6 address) in ma_endpoints6."""

    main: EndpointValue
    ipv6: Endpoint6Value | None = None


class EndpointMaps:
    """ma_endpoints and ma_endpoints6 written as one map of EndpointValues. The address goes in before
    the entry that switches enforcement on, and out after it, so that an endpoint's IPv6 is never judged
    with a stale address; a pod without IPv6 has its ma_endpoints6 entry removed (its IPv6 sources are
    then spoofed: fail closed). Any failed write raises, as TypedMap.update does."""

    def __init__(self, main: Any, ipv6: Any) -> None:
        self.main = main  # TypedMap[EndpointKey, EndpointValue]
        self.ipv6 = ipv6  # TypedMap[EndpointKey, Endpoint6Value]
        self.name = main.name
        self.capacity = main.capacity

    def update(self, key: EndpointKey, value: EndpointValues) -> None:
        if value.ipv6 is None:
            self.ipv6.delete(key)
        else:
            self.ipv6.update(key, value.ipv6)
        self.main.update(key, value.main)

    def delete(self, key: EndpointKey) -> bool:
        found: bool = self.main.delete(key)
        self.ipv6.delete(key)
        return found

    def items(self) -> Iterator[tuple[EndpointKey, EndpointValues]]:
        for key, main in self.main.items():
            yield key, EndpointValues(main, self.ipv6.lookup(key))

    def __len__(self) -> int:
        return len(self.main)


def encode(entry: EndpointEntry) -> tuple[EndpointKey, EndpointValues]:
    flags = (
        (ENFORCE_INGRESS if entry.enforce_ingress else 0)
        | (ENFORCE_EGRESS if entry.enforce_egress else 0)
        | (AUDIT_INGRESS if entry.audit_ingress else 0)
        | (AUDIT_EGRESS if entry.audit_egress else 0)
        | (ISOLATED if entry.isolated else 0)
    )
    value = EndpointValue(entry.endpoint_id, entry.identity, addr_to_net(entry.ipv4), flags)
    ipv6 = Endpoint6Value(addr6_to_net(entry.ipv6)) if entry.ipv6 is not None else None
    return EndpointKey(entry.ifindex), EndpointValues(value, ipv6)


def decode(key: EndpointKey, values: EndpointValues) -> EndpointEntry:
    value = values.main
    return EndpointEntry(
        ifindex=key.ifindex,
        endpoint_id=value.endpoint_id,
        identity=value.identity,
        ipv4=addr_from_net(value.addr_net),
        enforce_ingress=bool(value.flags & ENFORCE_INGRESS),
        enforce_egress=bool(value.flags & ENFORCE_EGRESS),
        audit_ingress=bool(value.flags & AUDIT_INGRESS),
        audit_egress=bool(value.flags & AUDIT_EGRESS),
        isolated=bool(value.flags & ISOLATED),
        ipv6=addr6_from_net(values.ipv6.addr_net) if values.ipv6 is not None else None,
    )
