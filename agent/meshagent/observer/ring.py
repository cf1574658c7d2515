"""A bounded, overwrite-oldest ring of flows (and lost-event markers) that many readers follow by sequence."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from meshagent.observer.convert import PreparedFlow
from meshagent.observer.proto.flow import flow_pb2 as pb

MAX_MARKERS = 4096  # lost-event markers remembered (over an hour of one a second)


class RingEntry:
    """A slot that holds a built flow (replayed, or pushed whole) or a marker saying events were lost
    upstream (kernel buffer, queue). Flows from the datapath are held as PreparedFlow, which has the same
    attributes and builds its message on first read."""

    __slots__ = ("flow", "lost", "seq", "time_ns")

    prepared: None = None  # see PreparedFlow.prepared

    def __init__(
        self, seq: int, time_ns: int, flow: pb.Flow | None = None, lost: pb.LostEvent | None = None
    ) -> None:
        self.seq = seq
        self.time_ns = time_ns  # wall clock, for since/until
        self.flow = flow
        self.lost = lost

    @property
    def metadata(self) -> pb.Flow | None:
        return self.flow


Entry = RingEntry | PreparedFlow  # what a slot holds


class FlowRing:
    """Fixed capacity; the writer never blocks, so a slow reader loses the oldest entries (and is told).

    Sequence numbers start at 0 and never repeat; entry `seq` lives in slot `seq % capacity` while
    `seq >= oldest_seq`.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be at least 1, got {capacity}")
        self._cap = capacity
        self._slots: list[Entry | None] = [None] * capacity
        self._next = 0
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0
        self._closed = False
        # The newest lost-event markers (rare: at most one a second from the loss poller), kept after they
        # are overwritten: a reader that fell behind, however far (back to the oldest marker remembered),
        # still gets the markers it missed, and is told how many *flows* it missed.
        self._markers: deque[RingEntry] = deque(maxlen=MAX_MARKERS)

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def oldest_seq(self) -> int:
        return max(0, self._next - self._cap)

    def __len__(self) -> int:
        return min(self._next, self._cap)

    @property
    def num_flows(self) -> int:
        """Flows held (lost-event markers excluded)."""
        with self._cond:
            oldest = max(0, self._next - self._cap)
            held = 0
            for m in reversed(self._markers):
                if m.seq < oldest:
                    break
                held += 1
            return min(self._next, self._cap) - held

    @property
    def overwritten(self) -> int:
        """Entries pushed out because the ring was full."""
        return max(0, self._next - self._cap)

    def push_flow(self, time_ns: int, flow: pb.Flow) -> None:
        self._push(time_ns, flow, None)

    def push_lost(self, time_ns: int, lost: pb.LostEvent) -> None:
        self._push(time_ns, None, lost)

    def push_many(self, items: Iterable[PreparedFlow]) -> None:
        with self._cond:
            seq = self._next
            slots = self._slots
            cap = self._cap
            for prepared in items:
                prepared.seq = seq
                slots[seq % cap] = prepared
                seq += 1
            self._next = seq
            if self._waiters:
                self._cond.notify_all()

    def _push(self, time_ns: int, flow: pb.Flow | None, lost: pb.LostEvent | None) -> None:
        with self._cond:
            seq = self._next
            entry = self._slots[seq % self._cap] = RingEntry(seq, time_ns, flow, lost)
            if lost is not None:
                self._markers.append(entry)  # the oldest falls out past MAX_MARKERS
            self._next = seq + 1
            if self._waiters:
                self._cond.notify_all()

    def get(self, seq: int) -> Entry | None:
        """The entry with this sequence number, or None if it was overwritten or not written yet."""
        entry = self._slots[seq % self._cap]
        if entry is None or entry.seq != seq:
            return None
        return entry

    def read_from(self, seq: int, limit: int = 1024) -> tuple[list[Entry], int, int]:
        """Up to `limit` entries from `seq`: (entries, next seq to read, number of flows lost before them).
        Lost-event markers overwritten since `seq` lead the entries: what the kernel lost is still told."""
        with self._cond:
            oldest = max(0, self._next - self._cap)
            lost = 0
            out: list[Entry | None] = []
            if seq < oldest:
                out = [m for m in self._markers if seq <= m.seq < oldest]
                lost = oldest - seq - len(out)
                seq = oldest
            end = min(self._next, seq + limit)
            out += [self._slots[s % self._cap] for s in range(seq, end)]
        return [e for e in out if e is not None], end, lost

    @property
    def waiting(self) -> int:
        """Readers blocked in wait_for() right now: followers that have read everything held."""
        with self._cond:
            return self._waiters

    def wait_for(self, seq: int, timeout: float) -> bool:
        """Block until an entry with sequence >= seq exists (True) or timeout/close (False)."""
        with self._cond:
            if self._next > seq:
                return True
            if self._closed:
                return False
            self._waiters += 1
            try:
                self._cond.wait_for(lambda: self._next > seq or self._closed, timeout)
            finally:
                self._waiters -= 1
            return self._next > seq

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def snapshot(self) -> list[Entry]:
        """Everything held, oldest first."""
        with self._cond:
            start = max(0, self._next - self._cap)
            out = [self._slots[s % self._cap] for s in range(start, self._next)]
        return [e for e in out if e is not None]
