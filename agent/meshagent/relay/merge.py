"""Time order across nodes: the relay's sort buffer for following streams.

Each node's stream is in time order on its own; together they are not. A following client gets them
merged through a small priority queue: an item leaves when more than `capacity` items are held (the
oldest by time goes first) or once the item at the head has waited `drain_s`, so a quiet node holds back
the others by at most that long. An item that arrives later than that behind newer ones already sent is
sent at once (late, never lost).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_CAPACITY = 100
DEFAULT_DRAIN_S = 0.5


@dataclass(order=True)
class _Held:
    time_ns: int
    seq: int
    arrived: float = field(compare=False)
    payload: bytes = field(compare=False)


class SortBuffer:
    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        drain_s: float = DEFAULT_DRAIN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("the sort buffer needs room for at least one item")
        if drain_s < 0:
            raise ValueError("drain_s must not be negative")
        self.capacity = capacity
        self.drain_s = drain_s
        self._clock = clock
        self._heap: list[_Held] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, time_ns: int, payload: bytes) -> None:
        heapq.heappush(self._heap, _Held(time_ns, next(self._seq), self._clock(), payload))

    def pop_ready(self) -> list[bytes]:
        """What may leave now, in time order."""
        out: list[bytes] = []
        heap = self._heap
        deadline = self._clock() - self.drain_s
        while heap and (len(heap) > self.capacity or heap[0].arrived <= deadline):
            out.append(heapq.heappop(heap).payload)
        return out

    def wait_s(self) -> float | None:
        """Seconds until the head must leave (None: nothing held)."""
        if not self._heap:
            return None
        return max(0.0, self._heap[0].arrived + self.drain_s - self._clock())

    def drain(self) -> list[bytes]:
        """Everything held, in time order (the end of a stream)."""
        out = [held.payload for held in sorted(self._heap)]
        self._heap.clear()
        return out
