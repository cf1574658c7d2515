"""One informer per kind: list, watch from the list's version, relist on 410, resync, reconnect.

The informer keeps the last state it emitted for every object. That cache is what lets
a relist (after 410 Gone, after an outage, or the periodic resync) emit only the
differences, and what drops duplicates a watch may replay after a reconnect. While the
API server is unreachable nothing is emitted, so the consumer keeps the last known state.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException

from meshagent.sources.backoff import Backoff, BackoffPolicy
from meshagent.sources.events import Action, ObjectEvent, ObjectKey, SyncEvent, object_key
from meshagent.sources.kube_client import KubeListError, ResourceClient
from meshagent.sources.sink import Sink
from meshagent.sources.status import KindStatus

logger = logging.getLogger(__name__)

HTTP_GONE = 410
HTTP_NOT_FOUND = 404


@dataclass(frozen=True)
class InformerSettings:
    resync_period: float = 300.0  # full relist-and-diff that catches anything a watch missed
    unserved_retry: float = 60.0  # a kind the server does not serve (CRD not installed) is asked again after
    watch_timeout: int = 240  # server-side end of one watch request (the client then re-watches)
    read_grace: float = 30.0  # extra client read timeout beyond watch_timeout: a silent stream is dead
    connect_timeout: float = 5.0
    page_size: int = 500  # list in pages (limit/continue), so a big cluster is not one huge response
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)


def _rv(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    def __init__(self, resource: ResourceClient, sink: Sink, *, settings: InformerSettings) -> None:
        self.kind = resource.info.kind
        self._resource = resource
        self._sink = sink
        self._settings = settings
        self._cache: dict[ObjectKey, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._status = KindStatus(str(self.kind), False, False, 0, "", None, None, 0, 0)

    # --- control -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._resource.stop_watch()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> KindStatus:
        with self._lock:
            return self._status

    def _set_status(self, **changes: Any) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)

    # --- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(self._settings.backoff)
        resource_version = ""
        next_resync = 0.0  # list first
        last_gone = -1.0
        while not self._stop.is_set():
            try:
                if not resource_version or time.monotonic() >= next_resync:
                    resource_version = self._relist()
                    next_resync = time.monotonic() + self._settings.resync_period
                    backoff.reset()
                started = time.monotonic()
                resource_version = self._watch(resource_version, next_resync)
                if time.monotonic() - started < 0.5:
                    # A server (or proxy) that ends every stream at once must not get a request storm.
                    self._stop.wait(backoff.next_delay())
                else:
                    backoff.reset()
            except ApiException as err:
                if err.status == HTTP_NOT_FOUND and not resource_version:
                    # The server does not serve this kind at all (a CRD that is not installed): there are
                    # no such objects. Count it as listed, so the agent can become ready, and ask again
                    # later in case the CRD gets installed.
                    self._unserved(err)
                    self._stop.wait(self._settings.unserved_retry)
                    continue
                if err.status == HTTP_GONE:
                    # Our version was compacted away: relist and emit only what changed.
                    logger.info(
                        "%s: watch from %s expired (410 Gone): relisting", self.kind, resource_version
                    )
                    resource_version = ""
                    now = time.monotonic()
                    if now - last_gone < 1.0:  # 410 right after a relist: do not loop hot
                        self._stop.wait(backoff.next_delay())
                    last_gone = now
                    continue
                self._failed(f"HTTP {err.status}: {err.reason}", backoff)
            except KubeListError as err:
                if err.status == HTTP_NOT_FOUND and not resource_version:
                    self._unserved(err)
                    self._stop.wait(self._settings.unserved_retry)
                    continue
                self._failed(str(err), backoff)
            except Exception as err:
                # urllib3's ProtocolError (stream cut), MaxRetryError (server gone), timeouts, bad JSON.
                # Keep the cache and the version: the next attempt watches on from where we were.
                if self._stop.is_set():
                    break
                self._failed(f"{type(err).__name__}: {err}", backoff)

    def _unserved(self, err: ApiException | KubeListError) -> None:
        now = time.monotonic()
        gone = [self._event(Action.DELETED, key, item, now) for key, item in sorted(self._cache.items())]
        self._cache = {}
        for event in gone:
            self._sink(event)
        message = "not served by the API server (HTTP 404); is its CRD installed?"
        with self._lock:
            first = not self._status.synced
            if first or self._status.last_error != message:
                logger.warning("%s: %s Treating it as empty.", self.kind, message)
            self._status = replace(
                self._status,
                connected=True,
                synced=True,
                objects=0,
                last_error=message,
                last_sync=time.time(),
            )
        if first:
            self._sink(SyncEvent(self.kind))

    def _failed(self, message: str, backoff: Backoff) -> None:
        delay = backoff.next_delay()
        logger.warning("%s: %s; retrying in %.2fs (keeping the last known state)", self.kind, message, delay)
        with self._lock:
            self._status = replace(
                self._status, connected=False, last_error=message, reconnects=self._status.reconnects + 1
            )
        self._stop.wait(delay)

    def _relist(self) -> str:
        items, resource_version = self._resource.list_all(
            read_timeout=self._settings.watch_timeout, page_size=self._settings.page_size
        )
        now = time.monotonic()
        fresh = {object_key(item, self.kind): item for item in items}
        events: list[ObjectEvent] = []
        for key, item in sorted(fresh.items()):
            previous = self._cache.get(key)
            if previous is None:
                events.append(self._event(Action.ADDED, key, item, now))
            elif _rv(previous) != _rv(item):
                events.append(self._event(Action.MODIFIED, key, item, now))
        for key in sorted(self._cache.keys() - fresh.keys()):
            events.append(self._event(Action.DELETED, key, self._cache[key], now))
        self._cache = fresh
        for event in events:
            self._sink(event)
        with self._lock:
            first = not self._status.synced
            self._status = replace(
                self._status,
                connected=True,
                synced=True,
                objects=len(fresh),
                resource_version=resource_version,
                last_sync=time.time(),
                last_error=None,
                relists=self._status.relists + (0 if first else 1),
            )
        if first:
            self._sink(SyncEvent(self.kind))
        logger.debug(
            "%s: listed %d objects at %s (%d changes)", self.kind, len(fresh), resource_version, len(events)
        )
        return resource_version

    def _watch(self, resource_version: str, next_resync: float) -> str:
        """Watch until the server ends the stream or a resync is due; returns the last version seen."""
        timeout = max(1, min(self._settings.watch_timeout, int(next_resync - time.monotonic()) + 1))
        for event in self._resource.watch(
            resource_version=resource_version,
            timeout_seconds=timeout,
            read_timeout=timeout + self._settings.read_grace,
            on_open=lambda: self._set_status(connected=True),
        ):
            if self._stop.is_set():
                break
            if event.type == "BOOKMARK":
                resource_version = _rv(event.obj) or resource_version
            elif event.type in ("ADDED", "MODIFIED", "DELETED"):
                self._apply(event.type, self._resource.fill_type(event.obj))
                resource_version = _rv(event.obj) or resource_version
            else:
                logger.warning("%s: ignoring watch event of unknown type %r", self.kind, event.type)
            self._set_status(connected=True, resource_version=resource_version, objects=len(self._cache))
        return resource_version

    def _apply(self, type_: str, obj: dict[str, Any]) -> None:
        key = object_key(obj, self.kind)
        previous = self._cache.get(key)
        now = time.monotonic()
        if type_ == "DELETED":
            if previous is None:
                return  # already gone (e.g. a relist saw the delete first)
            del self._cache[key]
            event = self._event(Action.DELETED, key, obj, now)
        else:
            if previous is not None and _rv(previous) == _rv(obj):
                return  # a replay of what we already have
            self._cache[key] = obj
            event = self._event(Action.ADDED if previous is None else Action.MODIFIED, key, obj, now)
        self._sink(event)

    def _event(self, action: Action, key: ObjectKey, obj: dict[str, Any], now: float) -> ObjectEvent:
        return ObjectEvent(action, self.kind, key.namespace, key.name, obj, source_time=now)
