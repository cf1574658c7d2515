"""Desired state into the kernel: store events -> typed models -> policy compiler -> datapath.

One thread owns the compiler and the datapath's maps. Until every kind has been listed once, changes go
into the compiler only (the kernel keeps what it has, adopted from a previous run if any); the first full
sync is applied whole, and every change after it as the diff the compiler returns.

Bad input loses nothing: an object that does not parse is rejected with its reason (log, counter, and a
Kubernetes Event through `on_rejected`), and the previous valid version of it, if any, stays in force.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Protocol

from meshagent.agent.attach_retry import AttachRetries
from meshagent.agent.enricher import ClusterEnricher, workloads_of
from meshagent.agent.subscription import StoreSubscription
from meshagent.datapath.discovery import EndpointInterfaces, NotUpYet, PodAddress, PodInterface
from meshagent.model.cluster import LocalEndpoint
from meshagent.model.errors import PolicyInputError
from meshagent.model.kernel_state import RULE_ID_NONE, Direction, KernelState
from meshagent.observer.enrich import EndpointInfo, PolicyRef
from meshagent.policy.attribution import attribute
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.diff import KernelDiff
from meshagent.policy.ingest import PolicyIngest
from meshagent.sources.events import Action, ObjectEvent, SyncEvent
from meshagent.sources.kinds import Kind
from meshagent.sources.store import ObjectStore

logger = logging.getLogger(__name__)

# The kinds whose first full list the policy needs before the kernel state may be replaced.
POLICY_KINDS = (Kind.NAMESPACE, Kind.POD, Kind.NETWORK_POLICY, Kind.ADMIN_NETWORK_POLICY)


class KernelWriter(Protocol):
    """What the reconciler needs of the datapath (meshagent.datapath.datapath.Datapath)."""

    def apply(self, state: KernelState) -> Any: ...

    def apply_diff(self, diff: KernelDiff) -> Any: ...

    def retry_attach(self, ifindexes: set[int] | None = None) -> dict[int, Any]: ...


@dataclass(frozen=True)
class Rejection:
    kind: str
    namespace: str
    name: str
    reason: str


class Reconciler:
    def __init__(
        self,
        *,
        store: ObjectStore,
        compiler: PolicyCompiler,
        datapath: KernelWriter,
        node: str,
        interfaces: EndpointInterfaces,
        enricher: ClusterEnricher,
        on_rejected: Callable[[dict[str, Any], str], None] = lambda obj, reason: None,
        on_attach_failed: Callable[[dict[str, Any], str], None] = lambda obj, reason: None,
        retry_interval: float = 0.5,
        attach_retries: AttachRetries | None = None,
    ) -> None:
        self.store = store
        self.compiler = compiler
        self.datapath = datapath
        self.node = node
        self.interfaces = interfaces
        self.enricher = enricher
        self._on_rejected = on_rejected
        self._on_attach_failed = on_attach_failed
        self._retry_interval = retry_interval
        self.attach_retries = attach_retries or AttachRetries()
        self._rediscover = False  # look the local pods' interfaces up again on the next pass
        self._events = StoreSubscription(store, "ma-reconciler")
        self._synced_kinds: set[Kind] = set()
        self._local_ips: dict[str, PodAddress] = {}  # "ns/pod" -> IP, for the pods on this node
        self._local_endpoints: dict[str, int] = {}  # "ns/pod" -> ifindex (= endpoint id)
        self._discovered_for: dict[str, PodAddress] = {}  # what the last interface lookup covered
        self.ingest = PolicyIngest(compiler, on_rejection=self._on_rejection)
        self._current: ObjectEvent | None = None
        self.applied = threading.Event()  # the first full sync is in the kernel
        self.apply_errors: list[str] = []
        self.last_apply_seconds = 0.0
        self.changes_applied = 0

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._events.start(self._run)

    def stop(self) -> None:
        self._events.stop()

    def endpoint_states(self) -> dict[str, str]:
        """Each local pod and where it stands: ready (with its interface) or why not yet."""
        out: dict[str, str] = {}
        for key, state in self.interfaces.states.items():
            failure = self.attach_retries.describe(key)
            if failure is not None:
                out[key] = failure
            elif isinstance(state, PodInterface):
                out[key] = f"ready ({state.ifname})" if key in self._local_endpoints else "found"
            else:
                out[key] = f"waiting: {state.reason}"
        return out

    # --- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            # A burst at a time, so the kernel is touched once per burst; [] when nothing came within the
            # retry interval (endpoints are still refreshed).
            batch = self._events.burst(timeout=self._retry_interval)
            if batch is None:
                return
            try:
                for item in batch:
                    self._handle(item)
                self._refresh_endpoints()
                self._retry_attachments()
                if not self.applied.is_set() and self._synced_kinds.issuperset(POLICY_KINDS):
                    self._full_apply()
            except Exception:  # one bad event must not stop enforcement updates
                logger.exception("reconciler step failed")

    def _handle(self, item: ObjectEvent | SyncEvent) -> None:
        if isinstance(item, SyncEvent):
            self._synced_kinds.add(item.kind)
            return
        handler = _HANDLERS.get(item.kind)
        if handler is None:
            return
        diff = handler(self, item)
        if diff is not None:
            self._apply(diff)

    def _apply(self, diff: KernelDiff) -> None:
        if not self.applied.is_set() or diff.is_empty:
            return  # before the first full sync the compiler only collects
        started = time.monotonic()
        result = self.datapath.apply_diff(diff)
        self.last_apply_seconds = time.monotonic() - started
        self.changes_applied += 1
        self._record_errors(result)
        self._note_attach_failures(getattr(result, "attach_failures", {}))
        self._refresh_isolation()

    def _refresh_isolation(self) -> None:
        """Which policies isolate each local endpoint, so that a default-deny flow can name them."""
        isolating: dict[tuple[int, bool], tuple[PolicyRef, ...]] = {}
        for ifindex in self._local_endpoints.values():
            for direction in Direction:
                found = attribute(
                    self.compiler, endpoint_id=ifindex, direction=direction, rule_id=RULE_ID_NONE
                )
                isolating[(ifindex, direction == Direction.EGRESS)] = tuple(
                    PolicyRef(kind="NetworkPolicy", namespace=ref.split("/", 1)[0], name=ref.split("/", 1)[1])
                    for ref in found.isolating
                )
        self.enricher.set_isolating(isolating)

    def _full_apply(self) -> None:
        started = time.monotonic()
        result = self.datapath.apply(self.compiler.state())
        self.last_apply_seconds = time.monotonic() - started
        self._record_errors(result)
        self._note_attach_failures(getattr(result, "attach_failures", {}))
        self._refresh_isolation()
        self.applied.set()
        logger.info(
            "first full sync in the kernel in %.3f s: %d local endpoints",
            self.last_apply_seconds,
            len(self._local_endpoints),
        )

    def _record_errors(self, result: Any) -> None:
        errors = list(getattr(result, "errors", []))
        if errors:
            self.apply_errors = errors[-20:]
            logger.error("kernel update incomplete: %s", "; ".join(errors[:3]))

    # --- attachment failures -----------------------------------------------------------------------

    def _note_attach_failures(self, failures: dict[int, Any]) -> None:
        """Each endpoint whose programs could not be attached: scheduled for a retry and reported. Its
        interface may have vanished since it was found: the next pass looks the interfaces up again."""
        if not failures:
            return
        pod_of = {ifindex: key for key, ifindex in self._local_endpoints.items()}
        for ifindex, err in failures.items():
            key = pod_of.get(ifindex)
            if key is None:
                continue
            if getattr(err, "interface_gone", False):
                self._rediscover = True
            failure = self.attach_retries.failed(key, ifindex, str(err))
            logger.error("endpoint %s: %s", key, self.attach_retries.describe(key))
            if failure.attempts == 1 or failure.attempts % 10 == 0:
                namespace, name = key.split("/", 1)
                obj = self.store.get(Kind.POD, namespace, name)
                if obj is not None:
                    self._on_attach_failed(obj, f"programs not attached to ifindex {ifindex}: {err}")

    def _retry_attachments(self) -> None:
        due = self.attach_retries.due()
        if not due:
            return
        self._rediscover = True  # a changed interface is found before the old number is tried again
        self._refresh_endpoints()
        retry = {
            key: f.ifindex
            for key, f in self.attach_retries.due().items()
            if self._local_endpoints.get(key) == f.ifindex
        }
        if not retry:
            return
        remaining = self.datapath.retry_attach(set(retry.values()))
        for key, ifindex in retry.items():
            if ifindex in remaining:
                self._note_attach_failures({ifindex: remaining[ifindex]})
            else:
                failure = self.attach_retries.succeeded(key)
                logger.info(
                    "endpoint %s: attached to ifindex %d after %d failed attempts",
                    key,
                    ifindex,
                    failure.attempts if failure else 0,
                )

    # --- objects ---------------------------------------------------------------------------------

    def _on_rejection(self, err: PolicyInputError) -> None:
        # Called by PolicyIngest while it handles self._current: that object is the one to report on.
        if self._current is not None:
            self._on_rejected(self._current.obj, str(err))

    @property
    def rejections(self) -> dict[tuple[str, str, str], Rejection]:
        """Objects currently rejected, by (kind, namespace, name)."""
        return {ref: Rejection(*ref, str(err)) for ref, err in self.ingest.rejections().items()}

    @property
    def rejected_total(self) -> int:
        return sum(self.ingest.rejected_total.values())

    def _objects(self, event: ObjectEvent) -> KernelDiff | None:
        """Namespaces, pods and policies go through PolicyIngest (parse, reject keeping the last good
        version, compile); pods on this node also become endpoints once their interface is found."""
        self._current = event
        try:
            diff = self.ingest.handle(event.action.value, event.obj)
        finally:
            self._current = None
        if event.kind == Kind.POD:
            self._local_pod(event)  # after the ingest: it reads the pod's addresses as parsed
            self.enricher.remove_endpoint_of(event.namespace or "", event.name)
            if event.action != Action.DELETED:
                self._update_enricher(event.namespace or "", event.name, event.obj)
        elif event.kind == Kind.NAMESPACE:
            self._refresh_enricher()
        return diff

    def _local_pod(self, event: ObjectEvent) -> None:
        key = f"{event.namespace or 'default'}/{event.name}"
        spec = event.obj.get("spec") or {}
        pod = self.compiler.pod((event.namespace or "default", event.name))
        # The host route to the pod's IPv4 address leads to its interface; an IPv6-only pod is found
        # by its IPv6 address.
        address = None if pod is None else (pod.ip or pod.ipv6)
        # A host-network pod shares the node's address and has no interface of its own to attach to.
        local = (
            event.action != Action.DELETED
            and spec.get("nodeName") == self.node
            and not spec.get("hostNetwork")
            and address is not None
        )
        if local and address is not None:
            self._local_ips[key] = address
            return
        self._local_ips.pop(key, None)
        self.attach_retries.forget(key)
        if self._local_endpoints.pop(key, None) is not None:
            namespace, name = key.split("/", 1)
            self._apply(self.compiler.remove_local_endpoint(namespace, name))

    def _node(self, event: ObjectEvent) -> KernelDiff | None:
        """This node's addresses are the host identity: pods always talk with their node (probes)."""
        if event.name != self.node:
            return None
        addresses: list[IPv4Address | IPv6Address] = []
        if event.action != Action.DELETED:
            for entry in (event.obj.get("status") or {}).get("addresses") or []:
                try:
                    addresses.append(ip_address(str(entry.get("address", ""))))
                except ValueError:
                    continue  # hostnames
        return self.compiler.set_host_addresses(addresses)

    # --- local endpoints -------------------------------------------------------------------------

    def _refresh_endpoints(self) -> None:
        """Finds the interfaces of local pods whose network is up; pods still waiting are retried on the
        next pass (every retry_interval)."""
        # Each lookup enters the node's network namespace: do it only when the set of local pods changed
        # or some pod's network is not up yet.
        if self._local_ips == self._discovered_for and not self.interfaces.pending() and not self._rediscover:
            return
        self._rediscover = False
        self._discovered_for = dict(self._local_ips)
        changed = self.interfaces.refresh(dict(self._local_ips))
        self.enricher.set_interfaces(
            {s.ifindex: s.ifname for s in self.interfaces.states.values() if isinstance(s, PodInterface)}
        )
        for key, state in changed.items():
            namespace, name = key.split("/", 1)
            if isinstance(state, PodInterface):
                if self._local_endpoints.get(key) != state.ifindex:
                    self.attach_retries.forget(key)
                    self._local_endpoints[key] = state.ifindex
                    endpoint = LocalEndpoint(endpoint_id=state.ifindex, ifindex=state.ifindex)
                    self._apply(self.compiler.set_local_endpoint(namespace, name, endpoint))
            elif isinstance(state, NotUpYet) and self._local_endpoints.pop(key, None) is not None:
                self.attach_retries.forget(key)
                self._apply(self.compiler.remove_local_endpoint(namespace, name))

    # --- enrichment ------------------------------------------------------------------------------

    def _endpoint_info(self, namespace: str, name: str, obj: dict[str, Any]) -> EndpointInfo | None:
        identity = self.compiler.identity_of((namespace, name))
        pod = self.compiler.pod((namespace, name))
        if identity is None or pod is None:
            return None
        labels = tuple(sorted(f"{k}={v}" for k, v in pod.label_dict().items()))
        return EndpointInfo(
            identity=identity, namespace=namespace, pod_name=name, labels=labels, workloads=workloads_of(obj)
        )

    def _update_enricher(self, namespace: str, name: str, obj: dict[str, Any]) -> None:
        pod = self.compiler.pod((namespace, name))
        info = self._endpoint_info(namespace, name, obj)
        if pod is not None and info is not None:
            for address in (pod.ip, pod.ipv6):
                if address is not None:
                    self.enricher.set_endpoint(address, info)

    def _refresh_enricher(self) -> None:
        """Namespace changes can change many pods' identities: rebuild the address map."""
        endpoints: dict[IPv4Address | IPv6Address, EndpointInfo] = {}
        for (namespace, name), pod in self.compiler.pods.items():
            obj = self.store.get(Kind.POD, namespace, name) or {}
            info = self._endpoint_info(namespace, name, obj)
            if info is not None:
                for address in (pod.ip, pod.ipv6):
                    if address is not None:
                        endpoints[address] = info
        self.enricher.replace_all(endpoints)


_HANDLERS: dict[Kind, Callable[[Reconciler, ObjectEvent], KernelDiff | None]] = {
    Kind.NAMESPACE: Reconciler._objects,
    Kind.POD: Reconciler._objects,
    Kind.NETWORK_POLICY: Reconciler._objects,
    Kind.ADMIN_NETWORK_POLICY: Reconciler._objects,
    Kind.NODE: Reconciler._node,
}
