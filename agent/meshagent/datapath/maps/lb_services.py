"""ma_lb_services: Service frontend (ClusterIP, port, protocol) -> weighted backends (hash)."""

from __future__ import annotations

import ctypes
import socket
from ipaddress import IPv4Address

from meshagent.datapath.maps.ipcache import addr_from_net, addr_to_net
from meshagent.model.kernel_state import Protocol
from meshagent.model.services import MAX_BACKENDS, Frontend, LBBackend, LBEntry

MAP_NAME = "ma_lb_services"
SLOTS = MAX_BACKENDS  # MA_LB_SLOTS


class ServiceKey(ctypes.Structure):
    """Must match struct ma_lb_service_key in bpf/lib/lb_types.h."""

    _fields_ = [
        ("addr_net", ctypes.c_uint32),
        ("port_net", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class Slot(ctypes.Structure):
    """Must match struct ma_lb_slot in bpf/lib/lb_types.h."""

    _fields_ = [
        ("addr_net", ctypes.c_uint32),
        ("port_net", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("weight_end", ctypes.c_uint32),
    ]


class ServiceValue(ctypes.Structure):
    """Must match struct ma_lb_service_value in bpf/lib/lb_types.h."""

    _fields_ = [
        ("total_weight", ctypes.c_uint32),
        ("affinity_timeout", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("pad", ctypes.c_uint32),
        ("slots", Slot * SLOTS),
    ]


C_FIELD_NAMES = {"addr_net": "addr", "port_net": "port"}


def _v4(address: object) -> IPv4Address:
    if not isinstance(address, IPv4Address):
        raise ValueError(f"{address} is not an IPv4 address")
    return address


def encode_key(frontend: Frontend) -> ServiceKey:
    address = addr_to_net(_v4(frontend.address))
    return ServiceKey(address, socket.htons(frontend.port), int(frontend.protocol), 0)


def encode(entry: LBEntry) -> tuple[ServiceKey, ServiceValue]:
    value = ServiceValue(total_weight=entry.total_weight, affinity_timeout=entry.affinity_timeout)
    value.count = len(entry.backends)
    running = 0
    for index, backend in enumerate(entry.backends):
        running += backend.weight
        value.slots[index] = Slot(addr_to_net(_v4(backend.address)), socket.htons(backend.port), 0, running)
    return encode_key(entry.frontend), value


def decode(key: ServiceKey, value: ServiceValue) -> LBEntry:
    frontend = Frontend(addr_from_net(key.addr_net), socket.ntohs(key.port_net), Protocol(key.protocol))
    backends = []
    previous = 0
    for index in range(min(value.count, SLOTS)):
        slot = value.slots[index]
        backends.append(
            LBBackend(addr_from_net(slot.addr_net), socket.ntohs(slot.port_net), slot.weight_end - previous)
        )
        previous = slot.weight_end
    return LBEntry(frontend=frontend, backends=tuple(backends), affinity_timeout=value.affinity_timeout)
