"""The one stream both sources produce: object events and per-kind sync markers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from meshagent.sources.kinds import Kind


class Action(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, order=True)
class ObjectKey:
    """Identity of an object: namespace is "" for cluster-scoped kinds."""

    kind: Kind
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class ObjectEvent:
    """An object appeared, changed or disappeared.

    `obj` is the object in the API's JSON shape (camelCase keys, `apiVersion` and
    `kind` set) whichever source produced it; for DELETED it is the last known state.
    `source_time` is time.monotonic() when the source learned of the change (for latency).
    """

    action: Action
    kind: Kind
    namespace: str
    name: str
    obj: dict[str, Any] = field(compare=False, repr=False)
    source_time: float = field(default=0.0, compare=False)

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.kind, self.namespace, self.name)

    @property
    def resource_version(self) -> str:
        return str(self.obj.get("metadata", {}).get("resourceVersion", ""))


@dataclass(frozen=True)
class SyncEvent:
    """Everything of `kind` that existed at the source's first full read has been sent."""

    kind: Kind


SourceEvent = ObjectEvent | SyncEvent


def object_key(obj: dict[str, Any], kind: Kind) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return ObjectKey(kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
