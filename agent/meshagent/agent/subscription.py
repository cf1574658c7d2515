"""A store's change events queued for one worker thread, taken a burst at a time.

The policy reconciler and the services reconciler both subscribe to the object store, work on their own
thread, and apply once per burst of changes rather than once per event.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from meshagent.sources.events import ObjectEvent, SyncEvent
from meshagent.sources.store import ObjectStore

StoreItem = ObjectEvent | SyncEvent


class StoreSubscription:
    """Queues the store's events from `start()` until `stop()`, which also ends the worker's `burst`."""

    def __init__(self, store: ObjectStore, thread_name: str) -> None:
        self._store = store
        self._name = thread_name
        self._queue: queue.Queue[StoreItem | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def start(self, run: Callable[[], None]) -> None:
        """Subscribes (every event from now on is queued), then runs `run` on a new thread."""
        self._unsubscribe = self._store.subscribe(self._queue.put)
        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def burst(self, timeout: float | None = None) -> list[StoreItem] | None:
        """The next event and whatever else is already queued behind it; [] when `timeout` passes with
        nothing; None once stopped."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if item is None:
            return None
        out = [item]
        while True:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                return out
            if more is None:
                return None
            out.append(more)
