"""Every ctypes mirror must match what BCC compiled from bpf/lib/types.h: sizes and field offsets.

The agent compiles in a short-lived process and keeps only descriptors, so these tests compile in their
own process (loader.load, as that process does) to read BCC's types."""

from __future__ import annotations

import ctypes
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from meshagent.datapath import events
from meshagent.datapath.loader import Capacities, load
from meshagent.datapath.maps import (
    conntrack,
    conntrack6,
    endpoints,
    events_lost,
    frags,
    frags6,
    ipcache,
    metrics,
    policy,
)
from meshagent.datapath.maps import wireguard as wg
from meshagent.datapath.maps import wireguard6 as wg6

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def compiled() -> Iterator[Any]:
    """The endpoint programs compiled in this process: BCC's object with its generated types."""
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-layout-{uuid.uuid4().hex[:8]}"
    loaded = load(pin_dir=pin_dir, capacities=Capacities())
    try:
        yield loaded.bpf
    finally:
        loaded.bpf.cleanup()
        shutil.rmtree(pin_dir, ignore_errors=True)


def _layout(struct: type[Any]) -> dict[str, tuple[int, int]]:
    """Field name -> (offset, size), without the padding fields BCC may add."""
    out = {}
    for name, *_ in struct._fields_:
        if name.startswith("__pad"):
            continue
        field = getattr(struct, name)
        out[name] = (field.offset, field.size)
    return out


def _assert_mirrors(ours: type[Any], compiled: type[Any], module: ModuleType) -> None:
    renames = getattr(module, "C_FIELD_NAMES", {})
    ours_layout = {renames.get(name, name): layout for name, layout in _layout(ours).items()}
    assert ctypes.sizeof(ours) == ctypes.sizeof(compiled), f"{ours.__name__}: size differs"
    assert ours_layout == _layout(compiled), f"{ours.__name__} does not mirror the compiled struct"


@pytest.mark.parametrize(
    ("module", "key", "value"),
    [
        (ipcache, ipcache.IPCacheKey, ipcache.IPCacheValue),
        (endpoints, endpoints.EndpointKey, endpoints.EndpointValue),
        (policy, policy.PolicyKey, policy.PolicyValue),
        (conntrack, conntrack.CTKey, conntrack.CTValue),
        (frags, frags.FragKey, frags.FragValue),
    ],
)
def test_map_mirrors_match_compiled_types(
    compiled: Any, module: ModuleType, key: type[Any], value: type[Any]
) -> None:
    table = compiled[module.MAP_NAME.encode()]
    _assert_mirrors(key, table.Key, module)
    _assert_mirrors(value, table.Leaf, module)


@pytest.mark.parametrize(
    ("module", "map_name", "key", "value"),
    [
        (ipcache, ipcache.MAP_NAME6, ipcache.IPCache6Key, ipcache.IPCacheValue),
        (endpoints, endpoints.MAP_NAME6, endpoints.EndpointKey, endpoints.Endpoint6Value),
        (conntrack6, conntrack6.MAP_NAME, conntrack6.CT6Key, conntrack.CTValue),
        (conntrack6, conntrack6.TCP_MAP_NAME, conntrack6.CT6Key, conntrack.CTValue),
        (frags6, frags6.MAP_NAME, frags6.Frag6Key, frags.FragValue),
    ],
)
def test_ipv6_map_mirrors_match_compiled_types(
    compiled: Any, module: ModuleType, map_name: str, key: type[Any], value: type[Any]
) -> None:
    table = compiled[map_name.encode()]
    _assert_mirrors(key, table.Key, module)
    _assert_mirrors(value, table.Leaf, module)


def test_per_cpu_value_mirrors(compiled: Any) -> None:
    # BCC describes a per-CPU value as an array with one element per CPU.
    metrics_table = compiled[metrics.MAP_NAME.encode()]
    _assert_mirrors(metrics.MetricsValue, metrics_table.Leaf._type_, metrics)
    lost_table = compiled[events_lost.MAP_NAME.encode()]
    assert ctypes.sizeof(lost_table.Leaf._type_) == ctypes.sizeof(events_lost.LostValue)


_C_SIZES = {"__u64": 8, "__u32": 4, "__u16": 2, "__u8": 1}


def test_event_record_mirror(compiled: Any) -> None:
    """The ring buffer's record type, as BCC's front end saw it in ringbuf_output(), field by field."""
    from bcc.libbcc import lib

    module, name = compiled.module, events.MAP_NAME.encode()
    compiled = []
    for index in range(lib.bpf_perf_event_fields(module, name)):
        field_name, field_type = lib.bpf_perf_event_field(module, name, index).decode().split("#")
        element, _, count = field_type.partition("[")
        size = _C_SIZES[element.strip()] * (int(count.rstrip("]")) if count else 1)
        compiled.append((field_name, size))
    renames = events.C_FIELD_NAMES
    ours = [
        (renames.get(field, field), getattr(events.EventRecord, field).size)
        for field, *_ in events.EventRecord._fields_
    ]
    assert ours == compiled


@pytest.mark.parametrize(
    ("map_name", "key", "value"),
    [
        (wg.REMOTE_MAP, wg.RemoteKey, wg.RemoteValue),
        (wg.STATS_MAP, wg.StatsKey, wg.StatsValue),
    ],
)
def test_encryption_map_mirrors_match_compiled_types(
    compiled: Any, map_name: str, key: type[Any], value: type[Any]
) -> None:
    table = compiled[map_name.encode()]
    _assert_mirrors(key, table.Key, wg)
    _assert_mirrors(value, table.Leaf, wg)


def test_encryption_ipv6_map_mirror_matches_compiled_types(compiled: Any) -> None:
    table = compiled[wg6.REMOTE_MAP.encode()]
    _assert_mirrors(wg6.Remote6Key, table.Key, wg6)
    _assert_mirrors(wg.RemoteValue, table.Leaf, wg)


def test_encryption_config_mirror_matches_compiled_type(compiled: Any) -> None:
    _assert_mirrors(wg.ConfigValue, compiled[wg.CONFIG_MAP.encode()].Leaf, wg)
