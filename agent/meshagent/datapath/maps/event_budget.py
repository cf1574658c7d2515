"""ma_event_budget: token buckets of events (an endpoint's own, and one per sender identity for what it
receives) and how many each suppressed."""

from __future__ import annotations

import ctypes

MAP_NAME = "ma_event_budget"


class BudgetKey(ctypes.Structure):
    """Must match struct ma_event_budget_key in bpf/lib/types.h."""

    _fields_ = [("ifindex", ctypes.c_uint32), ("peer_identity", ctypes.c_uint32)]


class BudgetValue(ctypes.Structure):
    """Must match struct ma_event_budget in bpf/lib/types.h."""

    _fields_ = [
        ("tokens", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("suppressed", ctypes.c_uint64),
    ]
