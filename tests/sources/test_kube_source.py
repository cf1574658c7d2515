"""The Kubernetes source, with the official client, against the emulator over real HTTP."""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest
from meshagent.sources.events import Action, ObjectEvent, SyncEvent
from meshagent.sources.kinds import KINDS, Kind
from meshagent.sources.kube_events import ObjectRef

from tests.sources import objects
from tests.sources.conftest import FAST, KubeRig, make_rig
from tests.sources.k8s_emulator import KubeEmulator
from tests.waiting import wait_until

ALL_KINDS = [str(info.kind) for info in KINDS]


def _key(obj: dict) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def test_initial_sync_delivers_every_object_then_marks_each_kind_synced(emulator: KubeEmulator) -> None:
    stored = [emulator.apply(o) for o in objects.one_of_each()]
    r = make_rig(emulator)
    r.dispatcher.start()
    r.source.start()
    try:
        assert r.source.wait_ready(5)
        assert wait_until(lambda: r.store.synced)
        added = r.recorder.objects()
        assert sorted((str(e.kind), e.namespace, e.name) for e in added) == sorted(_key(o) for o in stored)
        assert all(e.action is Action.ADDED for e in added)
        syncs = [e.kind for e in r.recorder.events if isinstance(e, SyncEvent)]
        assert sorted(syncs) == sorted(info.kind for info in KINDS)
        # Every object reached the store in the API's JSON shape, camelCase, with kind and apiVersion
        # (which list items lack on the wire).
        for original in stored:
            got = r.store.get(
                Kind(original["kind"]),
                original["metadata"].get("namespace", ""),
                original["metadata"]["name"],
            )
            assert got == original
        pod = r.store.get(Kind.POD, "web", "p1")
        assert (
            pod is not None and pod["spec"]["nodeName"] == "node-1" and pod["status"]["podIP"] == "10.1.0.5"
        )
        assert r.store.local_pods("node-1") == [pod] and r.store.local_pods("node-2") == []
        status = r.source.status()
        assert status.ready and status.connected and status.last_sync is not None
    finally:
        r.source.stop()
        r.dispatcher.stop()


def test_not_ready_until_every_kind_listed(emulator: KubeEmulator) -> None:
    emulator.fail_plurals.add("adminnetworkpolicies")
    r = make_rig(emulator)
    r.dispatcher.start()
    r.source.start()
    try:
        assert wait_until(lambda: r.store.is_synced(Kind.POD) and r.store.is_synced(Kind.NODE))
        time.sleep(0.3)
        assert not r.source.ready and not r.store.synced
        status = r.source.status()
        anp = next(k for k in status.kinds if k.kind == "AdminNetworkPolicy")
        assert not anp.synced and anp.last_error is not None and "500" in anp.last_error
        emulator.fail_plurals.clear()
        assert r.source.wait_ready(5)
        assert wait_until(lambda: r.store.synced)
    finally:
        r.source.stop()
        r.dispatcher.stop()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_add_modify_delete(rig: KubeRig, kind: str) -> None:
    assert rig.source.wait_ready(5)
    sample = copy.deepcopy(objects.SAMPLES[kind])
    k, ns, name = _key(
        {**sample, "metadata": {**sample["metadata"], "namespace": sample["metadata"].get("namespace", "")}}
    )
    v1 = rig.emulator.apply(sample)
    assert wait_until(lambda: rig.store.get(Kind(k), ns, name) == v1)
    sample["metadata"]["labels"] = {**(sample["metadata"].get("labels") or {}), "changed": "yes"}
    v2 = rig.emulator.apply(sample)
    assert wait_until(lambda: rig.store.get(Kind(k), ns, name) == v2)
    gone = rig.emulator.delete(kind, ns, name)
    assert gone is not None
    assert wait_until(lambda: rig.store.get(Kind(k), ns, name) is None)
    mine = [e for e in rig.recorder.objects() if e.name == name and str(e.kind) == kind]
    assert [(e.action, e.resource_version) for e in mine] == [
        (Action.ADDED, v1["metadata"]["resourceVersion"]),
        (Action.MODIFIED, v2["metadata"]["resourceVersion"]),
        (Action.DELETED, gone["metadata"]["resourceVersion"]),
    ]
    assert mine[1].obj["metadata"]["labels"]["changed"] == "yes"


def test_watch_dying_mid_stream_loses_and_duplicates_nothing(rig: KubeRig) -> None:
    assert rig.source.wait_ready(5)
    rig.emulator.apply(objects.namespace("web"))
    assert wait_until(lambda: rig.store.get(Kind.NAMESPACE, "", "web") is not None)
    watches = rig.emulator.counters.watches
    for round_ in range(3):
        pod_watches = watches.get("pods", 0)
        rig.emulator.drop_streams()
        # Changes made while the informers reconnect are replayed from their last version.
        for i in range(5):
            rig.emulator.apply(objects.pod(f"p{round_}-{i}", "web", ip=f"10.1.{round_}.{i + 1}"))
        assert wait_until(lambda n=pod_watches: watches.get("pods", 0) > n)  # type: ignore[misc]
    assert wait_until(lambda: len(rig.store.objects(Kind.POD)) == 15)
    time.sleep(0.3)
    pods = [e for e in rig.recorder.objects() if e.kind is Kind.POD]
    assert len(pods) == 15 and len({e.name for e in pods}) == 15
    assert all(e.action is Action.ADDED for e in pods)
    pod_status = next(k for k in rig.source.status().kinds if k.kind == "Pod")
    assert pod_status.reconnects >= 3 and pod_status.relists == 0


def test_410_after_changes_while_disconnected_emits_exactly_the_differences(rig: KubeRig) -> None:
    emu = rig.emulator
    emu.apply(objects.namespace("web"))
    p0 = emu.apply(objects.pod("p0", "web", ip="10.1.0.1"))
    for i in range(1, 4):
        emu.apply(objects.pod(f"p{i}", "web", ip=f"10.1.0.{i + 1}"))
    emu.apply(objects.network_policy("np", "web"))
    assert rig.source.wait_ready(5)
    assert wait_until(lambda: len(rig.store.objects(Kind.POD)) == 4)
    # The policy too must have arrived before the outage, or its relist rightly reports it as ADDED.
    assert wait_until(lambda: rig.store.get(Kind.NETWORK_POLICY, "web", "np") is not None)
    emu.stop()
    assert wait_until(lambda: not rig.source.status().connected)
    rig.recorder.clear()
    # While the agent cannot see: one pod deleted, one changed, one added, a policy changed
    # twice; then the history is compacted, so the informers' versions are gone (410).
    emu.delete("Pod", "web", "p0")
    p1 = emu.apply(objects.pod("p1", "web", ip="10.1.0.99"))
    p9 = emu.apply(objects.pod("p9", "web", ip="10.1.0.9"))
    emu.apply(objects.network_policy("np", "web", port=81))
    np2 = emu.apply(objects.network_policy("np", "web", port=82))
    emu.compact()
    emu.start()
    assert wait_until(lambda: rig.source.status().connected, timeout=10)
    assert wait_until(lambda: rig.store.get(Kind.POD, "web", "p9") is not None)
    time.sleep(0.5)  # let anything extra (a duplicate) arrive
    assert sorted(rig.recorder.summary()) == sorted(
        [
            ("DELETED", "Pod", "web/p0", p0["metadata"]["resourceVersion"]),  # its last known state
            ("MODIFIED", "Pod", "web/p1", p1["metadata"]["resourceVersion"]),
            ("ADDED", "Pod", "web/p9", p9["metadata"]["resourceVersion"]),
            ("MODIFIED", "NetworkPolicy", "web/np", np2["metadata"]["resourceVersion"]),
        ]
    )
    assert {o["metadata"]["name"] for o in rig.store.objects(Kind.POD)} == {"p1", "p2", "p3", "p9"}
    # Each kind relists when its own watch reconnects, which a loaded machine may leave for later.
    assert wait_until(lambda: all(k.relists >= 1 for k in rig.source.status().kinds), timeout=10)


def test_api_down_keeps_last_state_and_reports_it(rig: KubeRig) -> None:
    for o in objects.one_of_each():
        rig.emulator.apply(o)
    assert rig.source.wait_ready(5)
    assert wait_until(lambda: all(len(rig.store.objects(info.kind)) == 1 for info in KINDS))
    before = {info.kind: rig.store.objects(info.kind) for info in KINDS}
    rig.recorder.clear()
    rig.emulator.stop()
    assert wait_until(lambda: not rig.source.status().connected)
    time.sleep(1.0)  # several failed reconnects
    status = rig.source.status()
    assert not status.connected and status.ready and status.last_error
    assert all(k.reconnects >= 1 for k in status.kinds)
    assert {info.kind: rig.store.objects(info.kind) for info in KINDS} == before
    assert rig.recorder.objects() == []
    rig.emulator.start()
    new = rig.emulator.apply(objects.pod("after", "web", ip="10.1.0.77"))
    assert wait_until(lambda: rig.store.get(Kind.POD, "web", "after") == new, timeout=10)
    assert wait_until(lambda: rig.source.status().connected)


def test_server_errors_are_retried_with_state_kept(rig: KubeRig) -> None:
    assert rig.source.wait_ready(5)
    rig.emulator.apply(objects.pod("p", "default"))
    assert wait_until(lambda: rig.store.get(Kind.POD, "default", "p") is not None)
    rig.emulator.fail_requests = True
    rig.emulator.drop_streams()
    assert wait_until(lambda: "500" in (rig.source.status().last_error or ""))
    assert rig.store.get(Kind.POD, "default", "p") is not None
    rig.emulator.fail_requests = False
    later = rig.emulator.apply(objects.pod("q", "default"))
    assert wait_until(lambda: rig.store.get(Kind.POD, "default", "q") == later, timeout=10)


def test_slow_consumer_lags_but_loses_nothing(rig: KubeRig) -> None:
    assert rig.source.wait_ready(5)
    seen: list[str] = []

    def slow(event: object) -> None:
        if isinstance(event, ObjectEvent) and event.kind is Kind.POD:
            time.sleep(0.005)
            seen.append(event.resource_version)

    rig.store.subscribe(slow)
    versions = [
        rig.emulator.apply(objects.pod("busy", "default", ip=f"10.2.0.{i % 250 + 1}"))["metadata"][
            "resourceVersion"
        ]
        for i in range(150)
    ]
    # The source is not held back by the consumer: it has everything long before the consumer does.
    pod_informer = lambda: next(k for k in rig.source.status().kinds if k.kind == "Pod")  # noqa: E731
    assert wait_until(lambda: pod_informer().resource_version == versions[-1] or rig.dispatcher.backlog > 0)
    assert wait_until(lambda: len(seen) == 150, timeout=10)
    assert seen == versions
    assert rig.store.get(Kind.POD, "default", "busy")["metadata"]["resourceVersion"] == versions[-1]  # type: ignore[index]


def test_bookmarks_advance_the_resume_version(rig: KubeRig) -> None:
    assert rig.source.wait_ready(5)
    for i in range(3):
        rig.emulator.apply(objects.node(f"n{i}"))
    current = str(rig.emulator.resource_version)
    # The Pod informer saw no pod change, but bookmarks carry the newer version to it.
    assert wait_until(
        lambda: next(k for k in rig.source.status().kinds if k.kind == "Pod").resource_version == current,
        timeout=3,
    )


def test_periodic_resync_catches_a_lost_event(emulator: KubeEmulator) -> None:
    settings = FAST.__class__(**{**FAST.__dict__, "resync_period": 0.5})
    r = make_rig(emulator, settings)
    r.dispatcher.start()
    r.source.start()
    try:
        assert r.source.wait_ready(5)
        hidden = emulator.apply(objects.service("hidden", "default"), record=False)  # no watch event
        assert wait_until(lambda: r.store.get(Kind.SERVICE, "default", "hidden") == hidden, timeout=5)
        assert next(k for k in r.source.status().kinds if k.kind == "Service").relists >= 1
    finally:
        r.source.stop()
        r.dispatcher.stop()


def test_report_rejected_posts_a_warning_event(rig: KubeRig) -> None:
    np = rig.emulator.apply(objects.network_policy("bad", "web"))
    ref = ObjectRef.from_obj(np)
    rig.source.report_rejected(ref, "InvalidPolicy", "endPort without port")
    rig.source.report_rejected(ref, "InvalidPolicy", "endPort without port")  # deduplicated
    assert wait_until(lambda: len(rig.emulator.events) == 1)
    time.sleep(0.2)
    assert len(rig.emulator.events) == 1
    event = rig.emulator.events[0]
    assert event["type"] == "Warning" and event["reason"] == "InvalidPolicy"
    assert event["message"] == "endPort without port"
    assert event["involvedObject"]["kind"] == "NetworkPolicy"
    assert event["involvedObject"]["name"] == "bad" and event["involvedObject"]["namespace"] == "web"
    assert event["involvedObject"]["uid"] == np["metadata"]["uid"]
    assert event["metadata"]["namespace"] == "web"


def test_report_rejected_without_rbac_gives_up_quietly(rig: KubeRig) -> None:
    rig.emulator.forbid_events = True
    rig.source.report_rejected(ObjectRef("NetworkPolicy", "a", "web"), "InvalidPolicy", "one")
    rig.source.report_rejected(ObjectRef("NetworkPolicy", "b", "web"), "InvalidPolicy", "two")
    time.sleep(0.5)
    assert rig.emulator.events == []
    rig.emulator.forbid_events = False
    rig.source.report_rejected(ObjectRef("NetworkPolicy", "c", "web"), "InvalidPolicy", "three")
    time.sleep(0.3)
    assert rig.emulator.events == []  # it stopped trying after the 403


def test_in_stream_410_relists_without_duplicates(rig: KubeRig) -> None:
    emu = rig.emulator
    for i in range(3):
        emu.apply(objects.pod(f"p{i}", "web", ip=f"10.1.0.{i + 1}"))
    assert rig.source.wait_ready(5)
    assert wait_until(lambda: len(rig.store.objects(Kind.POD)) == 3)
    rig.recorder.clear()
    lists = emu.counters.lists.get("pods", 0)
    emu.expire_watches()
    assert wait_until(lambda: emu.counters.lists.get("pods", 0) > lists)
    changed = emu.apply(objects.pod("p1", "web", ip="10.1.0.50"))
    assert wait_until(lambda: rig.store.get(Kind.POD, "web", "p1") == changed)
    time.sleep(0.3)
    assert rig.recorder.summary() == [("MODIFIED", "Pod", "web/p1", changed["metadata"]["resourceVersion"])]
    assert next(k for k in rig.source.status().kinds if k.kind == "Pod").relists >= 1


def test_status_metrics_parse_and_follow_an_outage(rig: KubeRig) -> None:
    from meshagent.sources.metrics import SourceStatusCollector
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    registry.register(SourceStatusCollector(rig.source.status))

    def samples() -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, s.labels.get("kind", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    rig.emulator.apply(objects.pod("p", "web"))
    assert rig.source.wait_ready(5)
    assert wait_until(lambda: samples()[("meshagent_source_objects", "Pod")] == 1.0)
    now = samples()
    assert now[("meshagent_source_ready", "")] == 1.0 and now[("meshagent_source_connected", "")] == 1.0
    assert now[("meshagent_source_last_sync_timestamp_seconds", "Pod")] > 1.7e9
    rig.emulator.stop()
    assert wait_until(lambda: samples()[("meshagent_source_connected", "")] == 0.0)
    assert samples()[("meshagent_source_reconnects_total", "Pod")] >= 1.0
    assert samples()[("meshagent_source_objects", "Pod")] == 1.0  # the last known state is kept


def test_watch_timeouts_rewatch_without_relisting(emulator: KubeEmulator) -> None:
    settings = FAST.__class__(**{**FAST.__dict__, "watch_timeout": 1})
    r = make_rig(emulator, settings)
    r.dispatcher.start()
    r.source.start()
    try:
        assert r.source.wait_ready(5)
        assert wait_until(lambda: emulator.counters.watches.get("pods", 0) >= 3, timeout=6)
        made = emulator.apply(objects.pod("late", "default"))
        assert wait_until(lambda: r.store.get(Kind.POD, "default", "late") == made)
        pods = next(k for k in r.source.status().kinds if k.kind == "Pod")
        assert pods.relists == 0 and pods.reconnects == 0 and pods.connected
        assert emulator.counters.lists["pods"] == 1
    finally:
        r.source.stop()
        r.dispatcher.stop()


def test_paginated_list_and_an_expired_continuation(emulator: KubeEmulator) -> None:
    made = [emulator.apply(objects.pod(f"p{i:02}", "default", ip=f"10.3.0.{i + 1}")) for i in range(25)]
    emulator.expire_continues = True  # the first list's second page answers 410: list again
    settings = FAST.__class__(**{**FAST.__dict__, "page_size": 10})
    r = make_rig(emulator, settings)
    r.dispatcher.start()
    r.source.start()
    try:
        assert r.source.wait_ready(5)
        assert wait_until(lambda: len(r.store.objects(Kind.POD)) == 25)
        assert r.store.objects(Kind.POD) == made
        assert emulator.counters.lists["pods"] == 2 + 3  # page 1, expired page 2, then 3 pages
        added = [e for e in r.recorder.objects() if e.kind is Kind.POD]
        assert len(added) == 25 and {e.action for e in added} == {Action.ADDED}
    finally:
        r.source.stop()
        r.dispatcher.stop()


def test_streams_that_end_at_once_do_not_cause_a_request_storm(rig: KubeRig) -> None:
    assert rig.source.wait_ready(5)
    rig.emulator.stream_seconds = 0.0
    rig.emulator.drop_streams()
    time.sleep(0.2)
    before = rig.emulator.counters.watches.get("pods", 0)
    time.sleep(1.5)
    # Backoff 0.05 s doubling to 0.3 s: a handful of requests, not hundreds.
    assert rig.emulator.counters.watches.get("pods", 0) - before <= 12
    rig.emulator.stream_seconds = None
    made = rig.emulator.apply(objects.pod("p", "default"))
    assert wait_until(lambda: rig.store.get(Kind.POD, "default", "p") == made, timeout=5)


def test_a_kind_the_server_does_not_serve_counts_as_empty_and_is_asked_again(emulator: KubeEmulator) -> None:
    """A cluster without the AdminNetworkPolicy CRD: the source still becomes ready, says why the kind is
    empty, and picks the kind up once the CRD is installed."""
    emulator.unserved_plurals.add("adminnetworkpolicies")
    emulator.apply(objects.namespace("web"))
    rig = make_rig(emulator, dataclasses.replace(FAST, unserved_retry=0.3))
    rig.dispatcher.start()
    rig.source.start()
    try:
        assert rig.source.wait_ready(5), rig.source.status()
        anp = next(k for k in rig.source.status().kinds if k.kind == "AdminNetworkPolicy")
        assert anp.synced and anp.objects == 0 and "CRD" in (anp.last_error or "")
        emulator.unserved_plurals.clear()  # the CRD is installed
        emulator.apply(objects.admin_network_policy("platform"))
        assert wait_until(lambda: rig.store.get(Kind.ADMIN_NETWORK_POLICY, "", "platform") is not None)
    finally:
        rig.source.stop()
        rig.dispatcher.stop()
