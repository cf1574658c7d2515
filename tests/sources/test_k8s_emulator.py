"""The emulator itself, over raw HTTP: the behaviours the informer tests rely on."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import pytest

from tests.sources import objects
from tests.sources.k8s_emulator import KubeEmulator, field_selector_matches, label_selector_matches


def _get(emu: KubeEmulator, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(emu.host, emu.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _watch(emu: KubeEmulator, path: str, *, until: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Read `until` events from a watch stream."""
    conn = http.client.HTTPConnection(emu.host, emu.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        events = []
        while len(events) < until:
            line = resp.readline()
            if not line:
                break
            events.append(json.loads(line))
        return events
    finally:
        conn.close()


def test_lists_carry_the_global_resource_version(emulator: KubeEmulator) -> None:
    emulator.apply(objects.namespace("a"))
    pod = emulator.apply(objects.pod("p", "a"))
    emulator.apply(objects.node("n"))
    status, body = _get(emulator, "/api/v1/pods")
    assert status == 200 and body["kind"] == "PodList"
    assert body["metadata"]["resourceVersion"] == str(emulator.resource_version)
    assert [i["metadata"]["name"] for i in body["items"]] == ["p"]
    assert "kind" not in body["items"][0]  # as the real server: items carry no kind
    assert body["items"][0]["metadata"]["resourceVersion"] == pod["metadata"]["resourceVersion"]
    status, ns = _get(emulator, "/api/v1/namespaces/a")
    assert status == 200 and ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "a"
    assert _get(emulator, "/api/v1/namespaces/a/pods/p")[1]["metadata"]["uid"] == pod["metadata"]["uid"]
    assert _get(emulator, "/api/v1/namespaces/b/pods")[1]["items"] == []
    assert _get(emulator, "/api/v1/namespaces/a/pods/zz")[0] == 404


def test_every_kind_is_served_at_its_path(emulator: KubeEmulator) -> None:
    for obj in objects.one_of_each():
        emulator.apply(obj)
    paths = {
        "/api/v1/namespaces": "web",
        "/api/v1/pods": "p1",
        "/api/v1/services": "svc",
        "/api/v1/nodes": "node-1",
        "/apis/discovery.k8s.io/v1/endpointslices": "svc-abc",
        "/apis/networking.k8s.io/v1/namespaces/web/networkpolicies": "np",
        "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies": "anp",
    }
    for path, name in paths.items():
        status, body = _get(emulator, path)
        assert status == 200, path
        assert [i["metadata"]["name"] for i in body["items"]] == [name], path


def test_watch_replays_history_after_a_version_and_410_below_compaction(emulator: KubeEmulator) -> None:
    a = emulator.apply(objects.pod("a"))
    emulator.apply(objects.pod("b"))
    emulator.delete("Pod", "default", "a")
    since = a["metadata"]["resourceVersion"]
    events = _watch(emulator, f"/api/v1/pods?watch=true&resourceVersion={since}&timeoutSeconds=1", until=2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]
    emulator.compact()
    events = _watch(emulator, f"/api/v1/pods?watch=true&resourceVersion={since}", until=1)
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410
    # From the current version a watch works again, and without a version it starts with the state.
    events = _watch(emulator, "/api/v1/pods?watch=true&timeoutSeconds=1", until=1)
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "b"


def test_watch_sends_bookmarks_when_asked(emulator: KubeEmulator) -> None:
    emulator.apply(objects.node("n"))
    rv = emulator.resource_version
    start = time.monotonic()
    events = _watch(
        emulator, f"/api/v1/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true", until=2
    )
    assert [e["type"] for e in events] == ["BOOKMARK", "BOOKMARK"]
    assert events[0]["object"]["metadata"]["resourceVersion"] == str(rv)
    assert time.monotonic() - start >= 2 * emulator.bookmark_interval * 0.9


def test_selectors(emulator: KubeEmulator) -> None:
    emulator.apply(objects.pod("a", node="n1", app="web", tier="front"))
    emulator.apply(objects.pod("b", node="n2", app="db"))
    names = lambda q: [i["metadata"]["name"] for i in _get(emulator, f"/api/v1/pods?{q}")[1]["items"]]  # noqa: E731
    assert names("labelSelector=app%3Dweb") == ["a"]
    assert names("labelSelector=app%20in%20(web,db)") == ["a", "b"]
    assert names("labelSelector=!tier") == ["b"]
    assert names("fieldSelector=spec.nodeName%3Dn2") == ["b"]
    assert names("fieldSelector=metadata.name!%3Da") == ["b"]
    assert label_selector_matches("app notin (db),tier", {"app": "web", "tier": "x"})
    assert not field_selector_matches(
        "metadata.namespace=kube-system", {"metadata": {"namespace": "default"}}
    )


def test_fault_switches_and_writes_over_http(emulator: KubeEmulator) -> None:
    emulator.fail_requests = True
    assert _get(emulator, "/api/v1/pods")[0] == 500
    emulator.fail_requests = False
    conn = http.client.HTTPConnection(emulator.host, emulator.port, timeout=5)
    try:
        body = json.dumps(objects.pod("x", "default"))
        conn.request("POST", "/api/v1/namespaces/default/pods", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 201 and json.loads(resp.read())["metadata"]["resourceVersion"]
        conn.request("DELETE", "/api/v1/namespaces/default/pods/x")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["kind"] == "Pod"  # pods answer with the object
    finally:
        conn.close()
    emulator.stop()
    with pytest.raises(OSError):
        _get(emulator, "/api/v1/pods")
    emulator.start()
    assert _get(emulator, "/api/v1/pods")[0] == 200


def test_pages_come_from_the_first_pages_snapshot(emulator: KubeEmulator) -> None:
    for i in range(5):
        emulator.apply(objects.pod(f"p{i}"))
    status, first = _get(emulator, "/api/v1/pods?limit=2")
    assert status == 200
    token = first["metadata"]["continue"]
    emulator.delete("Pod", "default", "p4")  # after the snapshot: still in the later pages
    _, second = _get(emulator, f"/api/v1/pods?limit=2&continue={token}")
    _, third = _get(emulator, f"/api/v1/pods?limit=2&continue={second['metadata']['continue']}")
    names = [i["metadata"]["name"] for page in (first, second, third) for i in page["items"]]
    assert names == ["p0", "p1", "p2", "p3", "p4"] and "continue" not in third["metadata"]
    assert first["metadata"]["resourceVersion"] == third["metadata"]["resourceVersion"]
    emulator.compact()
    assert _get(emulator, f"/api/v1/pods?limit=2&continue={token}")[0] == 410
