"""Datapath timestamps are CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns); flows carry wall-clock time."""

from __future__ import annotations

import time


class WallClock:
    """Converts monotonic ns to wall-clock ns with an offset sampled now (call `resync` after clock steps)."""

    def __init__(self) -> None:
        self._offset_ns = 0
        self.resync()

    def resync(self) -> None:
        # Take the tightest of a few samples so the offset is not skewed by a preemption between the reads.
        best: tuple[int, int] | None = None
        for _ in range(3):
            m0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            r = time.clock_gettime_ns(time.CLOCK_REALTIME)
            m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            if best is None or m1 - m0 < best[0]:
                best = (m1 - m0, r - (m0 + m1) // 2)
        assert best is not None
        self._offset_ns = best[1]

    @property
    def offset_ns(self) -> int:
        """Wall clock minus monotonic clock, in ns."""
        return self._offset_ns

    def to_wall_ns(self, monotonic_ns: int) -> int:
        return monotonic_ns + self._offset_ns
