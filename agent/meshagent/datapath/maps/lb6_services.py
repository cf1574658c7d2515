"""ma_lb6_services: IPv6 Service frontend (ClusterIP, port, protocol) -> weighted IPv6 backends (hash)."""

from __future__ import annotations

import ctypes
import socket
from ipaddress import IPv6Address

from meshagent.model.kernel_state import Protocol
from meshagent.model.services import MAX_BACKENDS, Frontend, LBBackend, LBEntry

MAP_NAME = "ma_lb6_services"
SLOTS = MAX_BACKENDS  # MA_LB_SLOTS

Addr6 = ctypes.c_uint32 * 4  # __u32 addr[4], network order


def addr6_to_net(address: IPv6Address) -> ctypes.Array[ctypes.c_uint32]:
    return Addr6.from_buffer_copy(address.packed)


def addr6_from_net(words: ctypes.Array[ctypes.c_uint32]) -> IPv6Address:
    return IPv6Address(bytes(words))


class ServiceKey6(ctypes.Structure):
    """Must match struct ma_lb6_service_key in bpf/lib/lb6_types.h."""

    _fields_ = [
        ("addr_net", Addr6),
        ("port_net", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class Slot6(ctypes.Structure):
    """Must match struct ma_lb6_slot in bpf/lib/lb6_types.h."""

    _fields_ = [
        ("addr_net", Addr6),
        ("port_net", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("weight_end", ctypes.c_uint32),
    ]


class ServiceValue6(ctypes.Structure):
    """Must match struct ma_lb6_service_value in bpf/lib/lb6_types.h."""

    _fields_ = [
        ("total_weight", ctypes.c_uint32),
        ("affinity_timeout", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("pad", ctypes.c_uint32),
        ("slots", Slot6 * SLOTS),
    ]


C_FIELD_NAMES = {"addr_net": "addr", "port_net": "port"}


def _v6(address: object) -> IPv6Address:
    if not isinstance(address, IPv6Address):
        raise ValueError(f"{address} is not an IPv6 address")
    return address


def encode_key(frontend: Frontend) -> ServiceKey6:
    return ServiceKey6(
        addr6_to_net(_v6(frontend.address)), socket.htons(frontend.port), int(frontend.protocol), 0
    )


def encode(entry: LBEntry) -> tuple[ServiceKey6, ServiceValue6]:
    value = ServiceValue6(total_weight=entry.total_weight, affinity_timeout=entry.affinity_timeout)
    value.count = len(entry.backends)
    running = 0
    for index, backend in enumerate(entry.backends):
        running += backend.weight
        value.slots[index] = Slot6(addr6_to_net(_v6(backend.address)), socket.htons(backend.port), 0, running)
    return encode_key(entry.frontend), value


def decode(key: ServiceKey6, value: ServiceValue6) -> LBEntry:
    frontend = Frontend(addr6_from_net(key.addr_net), socket.ntohs(key.port_net), Protocol(key.protocol))
    backends = []
    previous = 0
    for index in range(min(value.count, SLOTS)):
        slot = value.slots[index]
        backends.append(
            LBBackend(addr6_from_net(slot.addr_net), socket.ntohs(slot.port_net), slot.weight_end - previous)
        )
        previous = slot.weight_end
    return LBEntry(frontend=frontend, backends=tuple(backends), affinity_timeout=value.affinity_timeout)
