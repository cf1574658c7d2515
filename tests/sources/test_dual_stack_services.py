"""Dual-stack Services arrive the same way from the Kubernetes API and from the manifest directory: the
same objects through either source give the same frontends for both families, and the same rejections
(with reasons) while the other objects stay in force."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from meshagent.agent.enricher import ClusterEnricher
from meshagent.agent.services import ServicesReconciler
from meshagent.model.kernel_state import Protocol
from meshagent.model.services import Frontend, LBEntry
from meshagent.sources.directory_source import DirectorySource
from meshagent.sources.kube_client import load_api_client
from meshagent.sources.kube_source import KubernetesSource
from meshagent.sources.pipeline import Dispatcher
from meshagent.sources.store import ObjectStore

from tests.socklb.helpers import endpoint_slice, service
from tests.sources.conftest import FAST
from tests.sources.k8s_emulator import KubeEmulator
from tests.waiting import wait_until

HTTP = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
SLICE_HTTP = [{"name": "http", "protocol": "TCP", "port": 8080}]
READY = {"ready": True}


def objects() -> list[dict[str, Any]]:
    web = service("web", "10.96.0.1", HTTP, ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv4", "IPv6"])
    web["spec"]["clusterIPs"] = ["10.96.0.1", "fd00:96::1"]
    bad_service = service("bad", "10.96.0.2", HTTP, ipFamilyPolicy="SingleStack")
    bad_service["spec"]["clusterIPs"] = ["10.96.0.2", "fd00:96::2"]
    bad_slice = endpoint_slice("web", SLICE_HTTP, [("10.244.0.9", READY)], address_type="IPv6")
    bad_slice["metadata"]["name"] = "web-broken"
    return [
        web,
        endpoint_slice("web", SLICE_HTTP, [("10.244.0.5", READY)]),
        endpoint_slice("web", SLICE_HTTP, [("fd00:244::5", READY)], address_type="IPv6"),
        bad_service,
        bad_slice,
    ]


class RecordingWriter:
    """Stands in for SocketLB.apply (the kernel side is covered by tests/socklb): keeps the last entries."""

    def __init__(self) -> None:
        self.entries: dict[Frontend, LBEntry] = {}
        self.lock = threading.Lock()

    def apply(self, desired: Mapping[Frontend, LBEntry]) -> None:
        with self.lock:
            self.entries = dict(desired)


def _directory_source(tmp_path: Path, sink: Any) -> Iterator[Any]:
    for index, obj in enumerate(objects()):
        (tmp_path / f"{index}.json").write_text(json.dumps(obj))
    yield DirectorySource(tmp_path, sink, poll_interval=0.05)


def _kube_source(_tmp_path: Path, sink: Any) -> Iterator[Any]:
    emulator = KubeEmulator(bookmark_interval=0.2)
    emulator.start()
    try:
        for obj in objects():
            emulator.apply(obj)
        yield KubernetesSource(load_api_client(host=emulator.url), sink, node="node-1", settings=FAST)
    finally:
        emulator.stop()


@pytest.mark.parametrize("make_source", [_directory_source, _kube_source], ids=["directory", "kubernetes"])
def test_the_same_frontends_and_rejections_from_either_source(make_source: Any, tmp_path: Path) -> None:
    store = ObjectStore()
    dispatcher = Dispatcher(store)
    writer = RecordingWriter()
    rejected: list[str] = []
    reconciler = ServicesReconciler(
        store=store,
        socket_lb=writer,
        enricher=ClusterEnricher(rule_lookup=lambda _rule: None),
        on_rejected=lambda _obj, reason: rejected.append(reason),
    )
    reconciler.start()
    dispatcher.start()
    source_factory = make_source(tmp_path, dispatcher.put)
    source = next(source_factory)
    source.start()
    try:
        assert wait_until(lambda: reconciler.applied.is_set() and len(rejected) == 2, timeout=20), rejected
        with writer.lock:
            entries = dict(writer.entries)
    finally:
        source.stop()
        dispatcher.stop()
        reconciler.stop()
        source_factory.close()

    assert {
        (str(f.address), f.port): [(str(b.address), b.port) for b in e.backends] for f, e in entries.items()
    } == {
        ("10.96.0.1", 80): [("10.244.0.5", 8080)],
        ("fd00:96::1", 80): [("fd00:244::5", 8080)],
    }
    assert Frontend(IPv4Address("10.96.0.1"), 80, Protocol.TCP) in entries
    assert Frontend(IPv6Address("fd00:96::1"), 80, Protocol.TCP) in entries
    assert sorted(rejected) == [
        "EndpointSlice default/web-broken: endpoints[0].addresses: address '10.244.0.9' is not IPv6",
        "Service default/bad: spec.ipFamilyPolicy SingleStack allows one family",
    ]
