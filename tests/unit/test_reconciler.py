"""The reconciler's bookkeeping without a kernel: what it hands the datapath and when. (Datapath behaviour
itself is tested with real packets in tests/datapath and tests/agent; here the datapath is a recorder.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from meshagent.agent.attach_retry import AttachRetries
from meshagent.agent.enricher import ClusterEnricher
from meshagent.agent.reconciler import Reconciler
from meshagent.datapath.datapath import ApplyResult
from meshagent.datapath.discovery import NotUpYet, PodInterface
from meshagent.datapath.errors import AttachError
from meshagent.model.kernel_state import KernelState
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.diff import KernelDiff
from meshagent.sources.events import Action, ObjectEvent, SyncEvent
from meshagent.sources.kinds import Kind
from meshagent.sources.store import ObjectStore

from tests.waiting import wait_until

NODE = "node-1"


class RecordingDatapath:
    def __init__(self) -> None:
        self.full: list[KernelState] = []
        self.diffs: list[KernelDiff] = []

    def apply(self, state: KernelState) -> Any:
        self.full.append(state)
        return None

    def apply_diff(self, diff: KernelDiff) -> Any:
        self.diffs.append(diff)
        return None

    def retry_attach(self, ifindexes: set[int] | None = None) -> dict[int, Any]:
        return {}


class FixedInterfaces:
    """Every local pod's interface is found at once, with ifindex 100 + its position."""

    def __init__(self) -> None:
        self._states: dict[str, PodInterface | NotUpYet] = {}

    @property
    def states(self) -> dict[str, PodInterface | NotUpYet]:
        return dict(self._states)

    def pending(self) -> list[str]:
        return []

    def refresh(self, pods: dict[str, Any]) -> dict[str, PodInterface | NotUpYet]:
        changed: dict[str, PodInterface | NotUpYet] = {}
        for index, key in enumerate(sorted(pods)):
            found = PodInterface(ifname=f"veth{index}", ifindex=100 + index)
            if self._states.get(key) != found:
                changed[key] = found
        self._states = {k: v for k, v in self._states.items() if k in pods} | changed
        return changed


def pod(
    name: str, ip: str, labels: dict[str, str], *, node: str = NODE, host_network: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}
    if host_network:
        spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": spec,
        "status": {"podIP": ip},
    }


def policy(port: Any, name: str = "db") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [port]}]},
    }


def event(action: Action, obj: dict[str, Any]) -> ObjectEvent:
    kind = Kind(obj["kind"])
    return ObjectEvent(action, kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], obj)


@pytest.fixture
def rig() -> Iterator[tuple[ObjectStore, Reconciler, RecordingDatapath]]:
    store = ObjectStore()
    datapath = RecordingDatapath()
    compiler = PolicyCompiler()
    rejected: list[str] = []
    reconciler = Reconciler(
        store=store,
        compiler=compiler,
        datapath=datapath,
        node=NODE,
        interfaces=FixedInterfaces(),  # type: ignore[arg-type]
        enricher=ClusterEnricher(rule_lookup=compiler.rules.lookup),
        on_rejected=lambda obj, reason: rejected.append(reason),
        retry_interval=0.05,
    )
    reconciler.start()
    try:
        yield store, reconciler, datapath
    finally:
        reconciler.stop()


def sync_all(store: ObjectStore) -> None:
    for kind in Kind:
        store.apply(SyncEvent(kind))


def test_nothing_reaches_the_kernel_before_every_policy_kind_is_listed(
    rig: tuple[ObjectStore, Reconciler, RecordingDatapath],
) -> None:
    store, reconciler, datapath = rig
    store.apply(event(Action.ADDED, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
    store.apply(event(Action.ADDED, pod("db", "10.0.0.2", {"app": "db"})))
    store.apply(SyncEvent(Kind.NAMESPACE))
    store.apply(SyncEvent(Kind.POD))
    time.sleep(0.2)
    assert datapath.full == [] and datapath.diffs == [] and not reconciler.applied.is_set()
    sync_all(store)
    assert wait_until(reconciler.applied.is_set)
    assert len(datapath.full) == 1
    assert [e.ipv4 for e in datapath.full[0].endpoints] == [__import__("ipaddress").IPv4Address("10.0.0.2")]


def test_an_invalid_update_is_rejected_and_the_valid_version_stays(
    rig: tuple[ObjectStore, Reconciler, RecordingDatapath],
) -> None:
    store, reconciler, datapath = rig
    store.apply(event(Action.ADDED, pod("db", "10.0.0.2", {"app": "db"})))
    store.apply(event(Action.ADDED, policy({"port": 80})))
    sync_all(store)
    assert wait_until(reconciler.applied.is_set)
    ports = {(e.port_lo, e.port_hi) for e in datapath.full[0].policy}
    assert (80, 80) in ports
    store.apply(event(Action.MODIFIED, policy({"endPort": 90})))  # endPort without port: invalid
    assert wait_until(lambda: bool(reconciler.rejections))
    rejection = next(iter(reconciler.rejections.values()))
    assert rejection.name == "db" and "endPort" in rejection.reason
    assert datapath.diffs == [], "the kernel keeps the last valid version"
    store.apply(event(Action.MODIFIED, policy({"port": 81})))
    assert wait_until(lambda: not reconciler.rejections and bool(datapath.diffs))
    added = {(e.port_lo, e.port_hi) for d in datapath.diffs for e in d.upsert_policy}
    removed = {(e.port_lo, e.port_hi) for d in datapath.diffs for e in d.delete_policy}
    assert (81, 81) in added and (80, 80) in removed


def test_only_this_nodes_own_pods_become_endpoints(
    rig: tuple[ObjectStore, Reconciler, RecordingDatapath],
) -> None:
    store, reconciler, datapath = rig
    store.apply(event(Action.ADDED, pod("db", "10.0.0.2", {"app": "db"})))
    store.apply(event(Action.ADDED, pod("elsewhere", "10.0.1.2", {"app": "db"}, node="node-2")))
    store.apply(event(Action.ADDED, pod("agent", "192.0.2.1", {"app": "agent"}, host_network=True)))
    sync_all(store)
    assert wait_until(reconciler.applied.is_set)
    assert {str(e.ipv4) for e in datapath.full[0].endpoints} == {"10.0.0.2"}
    assert set(reconciler.endpoint_states()) == {"shop/db"}
    # Every pod's address is known, local or not, for identities.
    assert {str(e.cidr) for e in datapath.full[0].ipcache} >= {"10.0.0.2/32", "10.0.1.2/32"}


class FlakyAttachDatapath(RecordingDatapath):
    """Attaching to ifindex 100 fails `failures` times (the first at the full apply), then works."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures_left = failures
        self.retries: list[set[int]] = []

    def _failures(self) -> dict[int, Any]:
        if self.failures_left <= 0:
            return {}
        self.failures_left -= 1
        return {100: AttachError("attach to ifindex 100 failed: (16, 'Device or resource busy')")}

    def apply(self, state: KernelState) -> Any:
        super().apply(state)
        return ApplyResult(attach_failures=self._failures())

    def retry_attach(self, ifindexes: set[int] | None = None) -> dict[int, Any]:
        self.retries.append(set(ifindexes or ()))
        return self._failures()


def test_an_endpoint_that_cannot_be_attached_is_retried_and_reported() -> None:
    store = ObjectStore()
    datapath = FlakyAttachDatapath(failures=3)
    compiler = PolicyCompiler()
    reported: list[tuple[str, str]] = []
    reconciler = Reconciler(
        store=store,
        compiler=compiler,
        datapath=datapath,
        node=NODE,
        interfaces=FixedInterfaces(),  # type: ignore[arg-type]
        enricher=ClusterEnricher(rule_lookup=compiler.rules.lookup),
        on_attach_failed=lambda obj, reason: reported.append((obj["metadata"]["name"], reason)),
        retry_interval=0.02,
        attach_retries=AttachRetries(first_delay=0.05, max_delay=0.2),
    )
    reconciler.start()
    try:
        store.apply(
            ObjectEvent(
                Action.ADDED, Kind.NAMESPACE, "", "shop", {"kind": "Namespace", "metadata": {"name": "shop"}}
            )
        )
        store.apply(event(Action.ADDED, pod("a", "10.0.0.2", {"app": "a"})))
        sync_all(store)
        assert wait_until(lambda: reconciler.endpoint_states().get("shop/a", "").startswith("attach failed"))
        assert reported and reported[0][0] == "a" and "Device or resource busy" in reported[0][1]
        assert wait_until(lambda: reconciler.endpoint_states().get("shop/a") == "ready (veth0)")
        assert datapath.retries[:3] == [{100}, {100}, {100}], "retried until it worked"
        assert reconciler.attach_retries.failed_attempts == 3
        assert len(reported) == 1, "one Event for a run of failures, not one per attempt"
    finally:
        reconciler.stop()


def test_attach_retries_back_off_and_start_over_for_a_new_interface() -> None:
    now = [0.0]
    retries = AttachRetries(first_delay=0.5, max_delay=4.0, clock=lambda: now[0])
    delays = []
    for _ in range(6):
        failure = retries.failed("ns/p", 7, "busy")
        delays.append(failure.next_retry - now[0])
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert retries.due() == {}
    now[0] = 4.0
    assert set(retries.due()) == {"ns/p"}
    assert retries.failed("ns/p", 8, "busy").attempts == 1, "another interface starts over"
    retries.forget("ns/p")
    assert retries.current() == {} and retries.describe("ns/p") is None
