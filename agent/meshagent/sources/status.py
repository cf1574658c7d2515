"""What a source says about itself, for `meshagent status` and the metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindStatus:
    kind: str
    connected: bool  # a watch (or the last read) is currently healthy
    synced: bool  # the first full list has been delivered
    objects: int
    resource_version: str
    last_sync: float | None  # time.time() of the last full list that succeeded
    last_error: str | None
    relists: int  # full lists after the first one (410 Gone, resync)
    reconnects: int  # watch streams restarted after an error or a dropped stream


@dataclass(frozen=True)
class SourceStatus:
    source: str  # "kubernetes" or "directory"
    ready: bool  # every kind had its first full read
    connected: bool  # every kind is currently healthy; False = serving the last known state
    last_error: str | None
    last_sync: float | None  # oldest last_sync across kinds
    kinds: tuple[KindStatus, ...] = ()
    errors: tuple[str, ...] = ()  # current per-file problems (directory source)
