"""Which map layout a build of the agent uses, so that a newer agent never reads maps it does not
understand.

Pinned maps live under `<pin_dir>/<layout id>/`. The id is derived from every map's key and value mirror
(field names, offsets, sizes) and the capacities, so any change to bpf/lib/types.h (mirrored, and checked
against the compiled types by a test) or to a map's size gives a new directory. An agent that finds only
other layouts' directories migrates: see Datapath.load and Datapath.apply.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path
from typing import Any

from meshagent.datapath import events
from meshagent.datapath.maps import (
    conntrack,
    conntrack6,
    endpoints,
    event_budget,
    events_lost,
    frags,
    frags6,
    ipcache,
    metrics,
    policy,
)

_MIRRORS: tuple[type[Any], ...] = (
    ipcache.IPCacheKey,
    ipcache.IPCacheValue,
    endpoints.EndpointKey,
    endpoints.EndpointValue,
    policy.PolicyKey,
    policy.PolicyValue,
    conntrack.CTKey,
    conntrack.CTValue,
    frags.FragKey,
    frags.FragValue,
    metrics.MetricsValue,
    events_lost.LostValue,
    events.EventRecord,
    event_budget.BudgetKey,
    event_budget.BudgetValue,
    ipcache.IPCache6Key,
    endpoints.Endpoint6Value,
    conntrack6.CT6Key,
    frags6.Frag6Key,
)


def _describe(struct: type[Any]) -> str:
    fields = ",".join(
        f"{name}@{getattr(struct, name).offset}:{getattr(struct, name).size}" for name, *_ in struct._fields_
    )
    return f"{struct.__name__}[{ctypes.sizeof(struct)}]({fields})"


def layout_id(capacity_flags: list[str]) -> str:
    text = ";".join([*(_describe(s) for s in _MIRRORS), *sorted(capacity_flags)])
    return "layout-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def other_layouts(pin_dir: Path, current: str) -> list[Path]:
    """Map directories of other layouts (left by an older or newer agent) under the pin directory."""
    if not pin_dir.is_dir():
        return []
    return sorted(
        p for p in pin_dir.iterdir() if p.is_dir() and p.name.startswith("layout-") and p.name != current
    )


def current_maps_dir(pin_dir: Path, capacity_flags: list[str]) -> Path:
    """Where this build keeps its maps under `pin_dir` (for readers such as tests and tools)."""
    return pin_dir / layout_id(capacity_flags)
