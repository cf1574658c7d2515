"""One stream, one consumer: sources put events on a queue, one thread applies them.

Sources run on their own threads (blocking watch streams, a directory poller);
funnelling their events through one queue keeps the store single-writer and the
order of events per source intact. The queue is unbounded on purpose: a slow
consumer makes the agent lag, it never makes a source drop an event.
"""

from __future__ import annotations

import queue
import threading

from meshagent.sources.events import SourceEvent
from meshagent.sources.store import ObjectStore


class Dispatcher:
    """Drains the event queue into an ObjectStore on one thread."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._queue: queue.Queue[SourceEvent | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def put(self, event: SourceEvent) -> None:
        """The sink a source writes to; safe from any thread, never blocks."""
        self._queue.put(event)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="source-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Apply what is queued, then stop."""
        if self._thread is None:
            return
        self._queue.put(None)  # the stop marker, after everything queued
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.store.apply(item)
