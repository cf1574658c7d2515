"""The Kubernetes API source: one informer per kind, one sink, ready after every first list."""

from __future__ import annotations

import time

from kubernetes import client

from meshagent.sources.kinds import KINDS, Kind, kind_info
from meshagent.sources.kube_client import ResourceClient
from meshagent.sources.kube_events import EventRecorder, ObjectRef
from meshagent.sources.kube_informer import Informer, InformerSettings
from meshagent.sources.sink import Sink
from meshagent.sources.status import SourceStatus


class KubernetesSource:
    def __init__(
        self,
        api_client: client.ApiClient,
        sink: Sink,
        *,
        node: str | None = None,
        kinds: tuple[Kind, ...] | None = None,
        settings: InformerSettings | None = None,
    ) -> None:
        self._settings = settings or InformerSettings()
        kinds = kinds if kinds is not None else tuple(info.kind for info in KINDS)
        self._informers = [
            Informer(
                ResourceClient(api_client, kind_info(kind), connect_timeout=self._settings.connect_timeout),
                sink,
                settings=self._settings,
            )
            for kind in kinds
        ]
        self._recorder = EventRecorder(api_client, host=node)

    def start(self) -> None:
        self._recorder.start()
        for informer in self._informers:
            informer.start()

    def stop(self) -> None:
        for informer in self._informers:
            informer.stop()
        self._recorder.stop()

    @property
    def ready(self) -> bool:
        """Every kind had its first full list delivered to the sink."""
        return all(informer.status().synced for informer in self._informers)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def status(self) -> SourceStatus:
        kinds = tuple(informer.status() for informer in self._informers)
        errors = [k.last_error for k in kinds if k.last_error and not k.connected]
        syncs = [k.last_sync for k in kinds]
        return SourceStatus(
            source="kubernetes",
            ready=all(k.synced for k in kinds),
            connected=all(k.connected for k in kinds),
            last_error=errors[0] if errors else next((k.last_error for k in kinds if k.last_error), None),
            last_sync=None if any(s is None for s in syncs) else min(s for s in syncs if s is not None),
            kinds=kinds,
        )

    def report_rejected(self, obj_ref: ObjectRef, reason: str, message: str = "") -> None:
        """Tell the cluster (a Warning Event on the object) that the agent rejected it."""
        self._recorder.report_rejected(obj_ref, reason, message)
