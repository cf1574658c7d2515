"""ma_endpoints: host-side interface of a local pod -> endpoint id, identity, address, enforcement."""

from __future__ import annotations

import ctypes

from meshagent.datapath.maps.ipcache import addr_from_net, addr_to_net
from meshagent.model.kernel_state import EndpointEntry

MAP_NAME = "ma_endpoints"

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


C_FIELD_NAMES = {"addr_net": "addr"}


def encode(entry: EndpointEntry) -> tuple[EndpointKey, EndpointValue]:
    flags = (
        (ENFORCE_INGRESS if entry.enforce_ingress else 0)
        | (ENFORCE_EGRESS if entry.enforce_egress else 0)
        | (AUDIT_INGRESS if entry.audit_ingress else 0)
        | (AUDIT_EGRESS if entry.audit_egress else 0)
        | (ISOLATED if entry.isolated else 0)
    )
    value = EndpointValue(entry.endpoint_id, entry.identity, addr_to_net(entry.ipv4), flags)
    return EndpointKey(entry.ifindex), value


def decode(key: EndpointKey, value: EndpointValue) -> EndpointEntry:
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
    )
