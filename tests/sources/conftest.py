"""Fixtures for the source tests: the API emulator, a store fed by a source, event recording."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from meshagent.sources.backoff import BackoffPolicy
from meshagent.sources.events import ObjectEvent, SourceEvent
from meshagent.sources.kube_client import load_api_client
from meshagent.sources.kube_informer import InformerSettings
from meshagent.sources.kube_source import KubernetesSource
from meshagent.sources.pipeline import Dispatcher
from meshagent.sources.store import ObjectStore

from tests.sources.k8s_emulator import KubeEmulator

FAST = InformerSettings(
    resync_period=300.0,
    watch_timeout=30,
    read_grace=5.0,
    connect_timeout=1.0,
    backoff=BackoffPolicy(initial=0.05, maximum=0.3),
)


@dataclass
class Recorder:
    """A subscriber that keeps every event it is given."""

    events: list[SourceEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: SourceEvent) -> None:
        with self.lock:
            self.events.append(event)

    def objects(self) -> list[ObjectEvent]:
        with self.lock:
            return [e for e in self.events if isinstance(e, ObjectEvent)]

    def summary(self) -> list[tuple[str, str, str, str]]:
        """(action, kind, namespace/name, resourceVersion) of every object event, in order."""
        return [
            (str(e.action), str(e.kind), f"{e.namespace}/{e.name}", e.resource_version)
            for e in self.objects()
        ]

    def clear(self) -> None:
        with self.lock:
            self.events.clear()


@dataclass
class KubeRig:
    emulator: KubeEmulator
    store: ObjectStore
    dispatcher: Dispatcher
    source: KubernetesSource
    recorder: Recorder


@pytest.fixture
def emulator() -> Iterator[KubeEmulator]:
    emu = KubeEmulator(bookmark_interval=0.2)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def make_rig(emulator: KubeEmulator, settings: InformerSettings = FAST) -> KubeRig:
    store = ObjectStore()
    recorder = Recorder()
    store.subscribe(recorder)
    dispatcher = Dispatcher(store)
    source = KubernetesSource(
        load_api_client(host=emulator.url), dispatcher.put, node="node-1", settings=settings
    )
    return KubeRig(emulator, store, dispatcher, source, recorder)


@pytest.fixture
def rig(emulator: KubeEmulator) -> Iterator[KubeRig]:
    """A started Kubernetes source on the emulator (test objects may be applied before or after)."""
    r = make_rig(emulator)
    r.dispatcher.start()
    r.source.start()
    try:
        yield r
    finally:
        r.source.stop()
        r.dispatcher.stop()
