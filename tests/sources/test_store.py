"""The store: current objects by kind, sync state, subscribers, one dispatcher thread."""

from __future__ import annotations

import threading

from meshagent.sources.events import Action, ObjectEvent, SourceEvent, SyncEvent
from meshagent.sources.kinds import KINDS, Kind
from meshagent.sources.pipeline import Dispatcher
from meshagent.sources.store import ObjectStore

from tests.sources import objects


def _event(action: Action, obj: dict) -> ObjectEvent:
    meta = obj["metadata"]
    return ObjectEvent(action, Kind(obj["kind"]), meta.get("namespace", ""), meta["name"], obj)


def test_apply_add_modify_delete_and_sync() -> None:
    store = ObjectStore()
    p1 = objects.pod("p1", "web")
    store.apply(_event(Action.ADDED, p1))
    assert store.get(Kind.POD, "web", "p1") == p1
    p1b = objects.pod("p1", "web", ip="10.9.9.9")
    store.apply(_event(Action.MODIFIED, p1b))
    assert store.objects(Kind.POD) == [p1b]
    store.apply(_event(Action.ADDED, objects.pod("p2", "web", node="node-2")))
    assert [p["metadata"]["name"] for p in store.local_pods("node-1")] == ["p1"]
    store.apply(_event(Action.DELETED, p1b))
    assert store.get(Kind.POD, "web", "p1") is None
    assert not store.synced and not store.is_synced(Kind.POD)
    for info in KINDS:
        store.apply(SyncEvent(info.kind))
    assert store.synced and store.is_synced(Kind.POD)


def test_subscribers_see_events_after_the_store_and_a_failing_one_harms_nobody() -> None:
    store = ObjectStore()
    seen: list[tuple[SourceEvent, bool]] = []

    def bad(event: SourceEvent) -> None:
        raise RuntimeError("boom")

    def good(event: SourceEvent) -> None:
        seen.append((event, store.get(Kind.NODE, "", "n") is not None))

    store.subscribe(bad)
    unsubscribe = store.subscribe(good)
    store.apply(_event(Action.ADDED, objects.node("n")))
    assert len(seen) == 1 and seen[0][1]  # the store already held the node
    unsubscribe()
    store.apply(_event(Action.DELETED, objects.node("n")))
    assert len(seen) == 1


def test_dispatcher_applies_in_order_from_many_threads_and_wait_for() -> None:
    store = ObjectStore()
    dispatcher = Dispatcher(store)
    dispatcher.start()
    try:

        def produce(t: int) -> None:
            for i in range(200):
                dispatcher.put(_event(Action.ADDED, objects.pod(f"t{t}-{i}", "web")))

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.wait_for(lambda s: len(s.objects(Kind.POD)) == 800, timeout=5)
        assert not store.wait_for(lambda s: len(s.objects(Kind.POD)) == 801, timeout=0.05)
    finally:
        dispatcher.stop()
