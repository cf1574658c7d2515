"""Kubernetes Events about objects the agent rejects (for example an invalid policy).

Posting happens on a background thread so a policy engine never blocks on an API
server that is slow or down. Without RBAC for events (403) the recorder says so
once and stops trying; identical reports are sent once per `repeat_after` seconds.
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

HTTP_FORBIDDEN = 403


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    name: str
    namespace: str = ""  # "" for cluster-scoped objects
    uid: str = ""
    api_version: str = ""

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> ObjectRef:
        meta = obj.get("metadata") or {}
        return cls(
            kind=str(obj.get("kind", "")),
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace") or ""),
            uid=str(meta.get("uid") or ""),
            api_version=str(obj.get("apiVersion", "")),
        )


def event_body(
    ref: ObjectRef, reason: str, message: str, *, component: str, host: str | None
) -> dict[str, Any]:
    """A core/v1 Warning Event about `ref`, in the API's JSON shape."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {"kind": ref.kind, "name": ref.name, "apiVersion": ref.api_version}
    if ref.namespace:
        involved["namespace"] = ref.namespace
    if ref.uid:
        involved["uid"] = ref.uid
    source: dict[str, str] = {"component": component}
    if host:
        source["host"] = host
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace or "default"},
        "involvedObject": involved,
        "reason": reason,
        "message": message or reason,
        "type": "Warning",
        "source": source,
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventRecorder:
    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        component: str = "meshagent",
        host: str | None = None,
        repeat_after: float = 600.0,
    ) -> None:
        self._api = client.CoreV1Api(api_client)
        self._component = component
        self._host = host
        self._repeat_after = repeat_after
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1000)
        self._sent: dict[tuple[ObjectRef, str, str], float] = {}
        self._forbidden = False
        self._thread: threading.Thread | None = None
        self.posted = 0  # events the API server accepted (for metrics and tests)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def report_rejected(self, obj_ref: ObjectRef, reason: str, message: str = "") -> None:
        if self._forbidden:
            return
        key = (obj_ref, reason, message)
        now = time.monotonic()
        if now - self._sent.get(key, -self._repeat_after) < self._repeat_after:
            return
        self._sent[key] = now
        if len(self._sent) > 10_000:  # forget old reports so the memory stays bounded
            self._sent = {k: t for k, t in self._sent.items() if now - t < self._repeat_after}
        body = event_body(obj_ref, reason, message, component=self._component, host=self._host)
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            logger.warning("event queue full; not reporting %s on %s", reason, obj_ref)

    def _run(self) -> None:
        while (body := self._queue.get()) is not None:
            if self._forbidden:
                continue
            namespace = body["metadata"]["namespace"]
            try:
                # The client validates a dict body into its CoreV1Event model, so the dict is fine here.
                resp: Any = self._api.create_namespaced_event(
                    namespace, cast(Any, body), _preload_content=False, _request_timeout=(2.0, 5.0)
                )
                status = int(getattr(resp, "status", 201))
                resp.release_conn()
            except ApiException as err:
                status = int(err.status or 0)
            except Exception as err:
                logger.warning("could not post event %s: %s", body["reason"], err)
                continue
            if status == HTTP_FORBIDDEN:
                self._forbidden = True
                logger.warning("not allowed to create events (RBAC): rejected objects are only logged")
            elif 200 <= status <= 299:
                self.posted += 1
            else:
                logger.warning("posting event %s answered HTTP %d", body["reason"], status)
