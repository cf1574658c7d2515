"""The one consumer of source events: current objects by kind, with subscribers.

The store is written by a single dispatcher thread (see pipeline.py) and read
from any thread; a lock guards the maps. Subscribers run on the dispatcher
thread, in event order, after the store already reflects the event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from meshagent.sources.events import Action, ObjectKey, SourceEvent, SyncEvent
from meshagent.sources.kinds import KINDS, Kind

logger = logging.getLogger(__name__)

Subscriber = Callable[[SourceEvent], None]


class ObjectStore:
    def __init__(self, *, kinds: tuple[Kind, ...] | None = None) -> None:
        self._kinds = kinds if kinds is not None else tuple(info.kind for info in KINDS)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._objects: dict[Kind, dict[ObjectKey, dict[str, Any]]] = {k: {} for k in self._kinds}
        self._synced: set[Kind] = set()
        self._subscribers: list[Subscriber] = []
        self._generation = 0  # bumped on every applied event, for waiters

    # --- writing (dispatcher thread) -------------------------------------------------

    def apply(self, event: SourceEvent) -> None:
        with self._lock:
            if isinstance(event, SyncEvent):
                self._synced.add(event.kind)
            else:
                by_key = self._objects.setdefault(event.kind, {})
                if event.action is Action.DELETED:
                    by_key.pop(event.key, None)
                else:
                    by_key[event.key] = event.obj
            self._generation += 1
            self._changed.notify_all()
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber(event)
            except Exception:
                # One faulty subscriber must not starve the others or stop the stream.
                logger.exception("subscriber %r failed on %r", subscriber, event)

    # --- reading (any thread) --------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber` for every later event; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(kind, {}).get(ObjectKey(kind, namespace, name))

    def objects(self, kind: Kind) -> list[dict[str, Any]]:
        with self._lock:
            return [obj for _, obj in sorted(self._objects.get(kind, {}).items())]

    def keys(self, kind: Kind) -> set[ObjectKey]:
        with self._lock:
            return set(self._objects.get(kind, {}))

    def local_pods(self, node: str) -> list[dict[str, Any]]:
        """Pods scheduled on `node` (spec.nodeName)."""
        return [p for p in self.objects(Kind.POD) if (p.get("spec") or {}).get("nodeName") == node]

    def is_synced(self, kind: Kind) -> bool:
        with self._lock:
            return kind in self._synced

    @property
    def synced(self) -> bool:
        """True once every kind had its first full read."""
        with self._lock:
            return self._synced.issuperset(self._kinds)

    def wait_for(self, predicate: Callable[[ObjectStore], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (re-checked after each event) or `timeout` passes."""
        # The predicate reads through the public methods, which take the lock again: so it is
        # evaluated with the lock released, and the generation counter catches changes in between.
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                generation = self._generation
            if predicate(self):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                if self._generation == generation:
                    self._changed.wait(remaining)
