"""Kubernetes object events (from the API or a manifest directory) -> the compiler, with rejections kept.

One bad object never takes others down: it is rejected with its reason (logged, counted, handed to an
optional callback that the agent turns into a Kubernetes Event and a metric), and on an invalid *update*
the last good version stays in force (the API server would have refused the update; only a directory
source can produce one, and a half-saved edit must lose nothing).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshagent.model.admin_policy import AdminNetworkPolicy
from meshagent.model.cluster import Namespace, Pod
from meshagent.model.errors import PolicyInputError
from meshagent.model.netpol import NetworkPolicy
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.diff import KernelDiff
from meshagent.policy.parse import parse_object

logger = logging.getLogger(__name__)

ObjectRef = tuple[str, str, str]  # (kind, namespace or "", name)
# Pods that ended keep their object (and IP) for a while; their address may already be someone else's.
_FINISHED_PHASES = {"Succeeded", "Failed"}


@dataclass
class PolicyIngest:
    compiler: PolicyCompiler
    on_rejection: Callable[[PolicyInputError], None] | None = None
    rejected_total: Counter[str] = field(default_factory=Counter)  # by kind, since start
    _rejections: dict[ObjectRef, PolicyInputError] = field(default_factory=dict)

    def rejections(self) -> dict[ObjectRef, PolicyInputError]:
        """Objects currently rejected (cleared when fixed or deleted)."""
        return dict(self._rejections)

    def handle(self, action: str, obj: Mapping[str, Any]) -> KernelDiff:
        """`action`: ADDED, MODIFIED or DELETED (the watch event type); `obj` in the API's JSON shape."""
        kind = str(obj.get("kind", ""))
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        assert isinstance(meta, Mapping)
        ref: ObjectRef = (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if kind == "Pod" and ref[1] == "":
            ref = (kind, "default", ref[2])
        if action == "DELETED":
            self._rejections.pop(ref, None)
            return self._delete(ref)
        try:
            model = parse_object(obj)
        except PolicyInputError as err:
            self._reject(ref, err)
            return KernelDiff()
        self._rejections.pop(ref, None)
        if model is None:
            return KernelDiff()  # a kind the policy engine does not read
        if isinstance(model, Namespace):
            return self.compiler.upsert_namespace(model)
        if isinstance(model, Pod):
            status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
            assert isinstance(status, Mapping)
            if status.get("phase") in _FINISHED_PHASES:
                return self.compiler.delete_pod(model.namespace, model.name)
            return self.compiler.upsert_pod(model)
        assert isinstance(model, NetworkPolicy | AdminNetworkPolicy)
        return self.compiler.upsert_policy(model)

    def _delete(self, ref: ObjectRef) -> KernelDiff:
        kind, namespace, name = ref
        if kind == "Namespace":
            return self.compiler.delete_namespace(name)
        if kind == "Pod":
            return self.compiler.delete_pod(namespace, name)
        if kind == "NetworkPolicy":
            return self.compiler.delete_network_policy(namespace, name)
        if kind == "AdminNetworkPolicy":
            return self.compiler.delete_admin_policy(name)
        return KernelDiff()

    def _reject(self, ref: ObjectRef, err: PolicyInputError) -> None:
        self._rejections[ref] = err
        self.rejected_total[ref[0]] += 1
        logger.warning("rejected %s (the last good version, if any, stays in force)", err)
        if self.on_rejection is not None:
            self.on_rejection(err)
