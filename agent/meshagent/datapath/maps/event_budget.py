"""ma_event_budget: per endpoint interface, the token bucket of events and how many it suppressed."""

from __future__ import annotations

import ctypes

MAP_NAME = "ma_event_budget"


class BudgetKey(ctypes.Structure):
    """Must match the __u32 key (ifindex) of ma_event_budget in bpf/lib/maps.h."""

    _fields_ = [("ifindex", ctypes.c_uint32)]


class BudgetValue(ctypes.Structure):
    """Must match struct ma_event_budget in bpf/lib/types.h."""

    _fields_ = [
        ("tokens", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("suppressed", ctypes.c_uint64),
    ]
