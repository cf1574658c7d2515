"""ma_events_lost: per-CPU count of events that did not fit in the ring buffer (index 0)."""

from __future__ import annotations

import ctypes

MAP_NAME = "ma_events_lost"


class LostValue(ctypes.Structure):
    """Must match the __u64 value of ma_events_lost in bpf/lib/maps.h."""

    _fields_ = [("count", ctypes.c_uint64)]
