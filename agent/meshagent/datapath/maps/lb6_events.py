"""ma_lb6_events: ring buffer of IPv6 translation decisions (struct ma_lb6_event), decoded to
ServiceTranslation like the IPv4 records of ma_lb_events."""

from __future__ import annotations

import ctypes
import struct
from ipaddress import IPv6Address

from meshagent.datapath.maps.lb6_services import Addr6
from meshagent.datapath.maps.lb_events import TRANSLATED
from meshagent.model.kernel_state import Protocol
from meshagent.model.services import Frontend, ServiceTranslation

MAP_NAME = "ma_lb6_events"


class EventRecord6(ctypes.Structure):
    """Must match struct ma_lb6_event in bpf/lib/lb6_types.h."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("cookie", ctypes.c_uint64),
        ("netns_cookie", ctypes.c_uint64),
        ("service_addr_net", Addr6),
        ("backend_addr_net", Addr6),
        ("service_port_net", ctypes.c_uint16),
        ("backend_port_net", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8),
        ("type", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


C_FIELD_NAMES = {
    "service_addr_net": "service_addr",
    "backend_addr_net": "backend_addr",
    "service_port_net": "service_port",
    "backend_port_net": "backend_port",
}

# Same layout; addresses as 16 raw bytes and ports big-endian as the kernel stores them.
_RECORD = struct.Struct("=3Q16s16s2s2sBB2x")
assert _RECORD.size == ctypes.sizeof(EventRecord6)


def decode(data: bytes | memoryview) -> ServiceTranslation:
    ts, cookie, netns, svc_addr, be_addr, svc_port, be_port, protocol, kind = _RECORD.unpack_from(data)
    frontend = Frontend(IPv6Address(svc_addr), int.from_bytes(svc_port, "big"), Protocol(protocol))
    backend = None
    if kind == TRANSLATED:
        backend = (IPv6Address(be_addr), int.from_bytes(be_port, "big"))
    return ServiceTranslation(
        timestamp_ns=ts, socket_cookie=cookie, netns_cookie=netns, frontend=frontend, backend=backend
    )
