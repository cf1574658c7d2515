"""The load-balancer's own lifecycle: map layouts match what BCC compiled, state is written as a diff,
detach removes exactly our attachments, and pinned state outlives the object that wrote it."""

from __future__ import annotations

import ctypes
import json
import subprocess
from ipaddress import IPv4Address
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from meshagent.datapath.maps import (
    lb6_affinity,
    lb6_events,
    lb6_revnat,
    lb6_services,
    lb_affinity,
    lb_events,
    lb_revnat,
    lb_services,
)
from meshagent.datapath.socklb import PROGRAMS, SocketLB, pinned_entries
from meshagent.model.kernel_state import Protocol
from meshagent.model.services import Frontend, LBBackend, LBEntry
from meshagent.testing.topology import Topology

from tests.socklb.helpers import run_client

pytestmark = pytest.mark.kernel

VIP = IPv4Address("10.96.0.40")


def _layout(struct: type[Any], renames: dict[str, str]) -> dict[str, tuple[int, int]]:
    return {
        renames.get(name, name): (getattr(struct, name).offset, getattr(struct, name).size)
        for name, *_ in struct._fields_
        if not name.startswith("__pad")
    }


@pytest.mark.parametrize(
    ("module", "key", "value"),
    [
        (lb_services, lb_services.ServiceKey, lb_services.ServiceValue),
        (lb_revnat, lb_revnat.RevNatKey, lb_revnat.RevNatValue),
        (lb_affinity, lb_affinity.AffinityKey, lb_affinity.AffinityValue),
        (lb6_services, lb6_services.ServiceKey6, lb6_services.ServiceValue6),
        (lb6_revnat, lb6_revnat.RevNatKey6, lb6_revnat.RevNatValue6),
        (lb6_affinity, lb6_affinity.AffinityKey6, lb6_affinity.AffinityValue6),
    ],
)
def test_map_mirrors_match_compiled_types(
    socklb: SocketLB, module: ModuleType, key: type[Any], value: type[Any]
) -> None:
    table = socklb.bpf[module.MAP_NAME.encode()]
    renames = module.C_FIELD_NAMES
    for ours, compiled in ((key, table.Key), (value, table.Leaf)):
        assert ctypes.sizeof(ours) == ctypes.sizeof(compiled), ours.__name__
        assert _layout(ours, renames) == _layout(compiled, {}), ours.__name__
    if module is lb_services:
        slot = dict(table.Leaf._fields_)["slots"]._type_  # the compiled struct ma_lb_slot
        assert _layout(lb_services.Slot, renames) == _layout(slot, {})
    if module is lb6_services:
        slot = dict(table.Leaf._fields_)["slots"]._type_  # the compiled struct ma_lb6_slot
        assert _layout(lb6_services.Slot6, renames) == _layout(slot, {})


def _entry(port: int, *backends: tuple[str, int], affinity: int = 0) -> LBEntry:
    return LBEntry(
        frontend=Frontend(VIP, port, Protocol.TCP),
        backends=tuple(LBBackend(IPv4Address(ip), p, w) for ip, p, w in [(*b, 1) for b in backends]),
        affinity_timeout=affinity,
    )


def test_apply_writes_only_the_difference(lb_topo: Topology, socklb: SocketLB) -> None:
    a = _entry(80, ("10.244.5.20", 80))
    b = _entry(81, ("10.244.5.20", 81), ("10.244.5.30", 81), affinity=30)
    first = socklb.apply({a.frontend: a, b.frontend: b})
    assert set(first.diff.upserts) == {a, b} and not first.diff.removals
    assert socklb.entries() == {a.frontend: a, b.frontend: b}  # decoded back exactly

    assert socklb.apply({a.frontend: a, b.frontend: b}).diff.empty

    b2 = _entry(81, ("10.244.5.30", 81), affinity=30)
    second = socklb.apply({a.frontend: a, b2.frontend: b2})
    assert second.diff.upserts == (b2,) and not second.diff.removals

    third = socklb.apply({b2.frontend: b2})
    assert third.diff.removals == (a.frontend,) and not third.diff.upserts
    assert socklb.entries() == {b2.frontend: b2}
    assert pinned_entries(socklb.pin_dir) == {b2.frontend: b2}  # read by path, no program loaded


def _attached(cgroup: Path) -> set[int]:
    out = subprocess.run(["bpftool", "cgroup", "show", str(cgroup), "-j"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return {
        item["id"] for item in json.loads(out.stdout.strip() or "[]") if item["name"].startswith("ma_sock_")
    }


def test_detach_removes_exactly_our_attachments_and_pinned_state_is_shared(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, lb_pin_dir: Path, tmp_path: Path
) -> None:
    client = lb_topo.add_pod("client", "10.244.5.10")
    lb_topo.add_pod("b1", "10.244.5.20").serve(tcp=(80,))
    entry = _entry(80, ("10.244.5.20", 80))
    socklb.apply({entry.frontend: entry})
    ours = _attached(lb_cgroup)
    assert len(ours) == len(PROGRAMS)  # four hooks per family

    second = SocketLB(pin_dir=lb_pin_dir, cgroup=lb_cgroup)
    second.load()
    try:
        assert second.entries() == {entry.frontend: entry}  # adopted from the pinned map
        second.attach(replace_stale=False)
        theirs = _attached(lb_cgroup) - ours
        assert len(theirs) == len(PROGRAMS)
        second.detach()
        assert _attached(lb_cgroup) == ours  # only the second object's programs went away

        socklb.detach()
        try:
            assert _attached(lb_cgroup) == set()
            untouched = run_client(client, "tcp", str(VIP), "80", "--timeout", "2", cgroup=lb_cgroup)
            assert untouched["errors"] == {"EHOSTUNREACH": 1}, untouched
        finally:
            socklb.attach()
        assert run_client(client, "tcp", str(VIP), "80", cgroup=lb_cgroup)["ok"] == 1
    finally:
        second.close()


def test_a_restarted_agent_retires_the_attachments_it_finds(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, lb_pin_dir: Path
) -> None:
    client = lb_topo.add_pod("client", "10.244.5.10")
    lb_topo.add_pod("b1", "10.244.5.20").serve(tcp=(80,))
    entry = _entry(80, ("10.244.5.20", 80))
    socklb.apply({entry.frontend: entry})
    before = _attached(lb_cgroup)

    successor = SocketLB(pin_dir=lb_pin_dir, cgroup=lb_cgroup)
    successor.load()
    try:
        successor.attach()  # replaces the session's programs, as a restarted agent would
        after = _attached(lb_cgroup)
        assert len(after) == len(PROGRAMS) and not after & before
        assert run_client(client, "tcp", str(VIP), "80", "--count", "3", cgroup=lb_cgroup)["ok"] == 3
        socklb.detach()  # its programs are gone already: nothing to do, no error
        assert _attached(lb_cgroup) == after
    finally:
        successor.close()
        socklb.attach()
    assert len(_attached(lb_cgroup)) == len(PROGRAMS)


_C_SIZES = {"__u64": 8, "__u32": 4, "__u16": 2, "__u8": 1}


@pytest.mark.parametrize(
    ("module", "record"),
    [(lb_events, lb_events.EventRecord), (lb6_events, lb6_events.EventRecord6)],
)
def test_event_record_mirror(socklb: SocketLB, module: ModuleType, record: type[Any]) -> None:
    """Each ring buffer's record as BCC's front end saw it in ringbuf_output(), field by field."""
    from bcc.libbcc import lib

    compiled = []
    for index in range(lib.bpf_perf_event_fields(socklb.bpf.module, module.MAP_NAME.encode())):
        raw = lib.bpf_perf_event_field(socklb.bpf.module, module.MAP_NAME.encode(), index)
        field_name, field_type = raw.decode().split("#")
        element, _, count = field_type.partition("[")
        compiled.append((field_name, _C_SIZES[element.strip()] * (int(count.rstrip("]")) if count else 1)))
    renames = module.C_FIELD_NAMES
    ours = [(renames.get(field, field), getattr(record, field).size) for field, *_ in record._fields_]
    assert ours == compiled


def test_uninstall_from_a_fresh_process_removes_every_attachment_of_ours(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    from meshagent.datapath.socklb import uninstall_from

    other_pins = tmp_path / "not-a-pin-dir"  # the session's pinned maps must stay
    other_pins.mkdir()
    assert len(_attached(lb_cgroup)) == len(PROGRAMS)
    try:
        assert uninstall_from(lb_cgroup, pin_dir=other_pins) == len(PROGRAMS)
        assert _attached(lb_cgroup) == set()
    finally:
        socklb.detach()  # its programs are gone already: nothing to do
        socklb.attach()
    assert len(_attached(lb_cgroup)) == len(PROGRAMS)
