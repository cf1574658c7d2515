"""ma_metrics: per-CPU packet/byte counters indexed by reason * 2 + direction (reason 0: forwarded)."""

from __future__ import annotations

import ctypes

from meshagent.model.events import DropReason
from meshagent.model.kernel_state import Direction

MAP_NAME = "ma_metrics"
REASONS = 32  # MA_METRICS_REASONS


class MetricsValue(ctypes.Structure):
    """Must match struct ma_metrics_value in bpf/lib/types.h."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


C_FIELD_NAMES: dict[str, str] = {}


def index_of(reason: int, direction: Direction) -> int:
    return reason * 2 + int(direction)


def known_indexes() -> list[tuple[DropReason, Direction, int]]:
    return [
        (reason, direction, index_of(reason, direction)) for reason in DropReason for direction in Direction
    ]
