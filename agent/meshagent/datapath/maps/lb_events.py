"""ma_lb_events: ring buffer of translation decisions (struct ma_lb_event), decoded to ServiceTranslation."""

from __future__ import annotations

import ctypes
import socket
import struct
from ipaddress import IPv4Address

from meshagent.model.kernel_state import Protocol
from meshagent.model.services import Frontend, ServiceTranslation

MAP_NAME = "ma_lb_events"
LOST_MAP_NAME = "ma_lb_events_lost"
TRANSLATED = 1  # MA_LB_EVENT_TRANSLATED
REFUSED = 2  # MA_LB_EVENT_REFUSED


class EventRecord(ctypes.Structure):
    """Must match struct ma_lb_event in bpf/lib/lb_types.h."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("cookie", ctypes.c_uint64),
        ("netns_cookie", ctypes.c_uint64),
        ("service_addr_net", ctypes.c_uint32),
        ("backend_addr_net", ctypes.c_uint32),
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

# Same layout; addresses as 4 raw bytes and ports big-endian as the kernel stores them.
_RECORD = struct.Struct("=3Q4s4s2s2sBB2x")
assert _RECORD.size == ctypes.sizeof(EventRecord)


def decode(data: bytes | memoryview) -> ServiceTranslation:
    ts, cookie, netns, svc_addr, be_addr, svc_port, be_port, protocol, kind = _RECORD.unpack_from(data)
    frontend = Frontend(
        IPv4Address(socket.inet_ntoa(svc_addr)), int.from_bytes(svc_port, "big"), Protocol(protocol)
    )
    backend = None
    if kind == TRANSLATED:
        backend = (IPv4Address(socket.inet_ntoa(be_addr)), int.from_bytes(be_port, "big"))
    return ServiceTranslation(
        timestamp_ns=ts, socket_cookie=cookie, netns_cookie=netns, frontend=frontend, backend=backend
    )
