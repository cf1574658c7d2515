"""On every kernel of the matrix: BCC compiles and loads a tc program, cls_bpf attaches it to a veth in a
network namespace, and real pings are counted, then dropped, then allowed again by the program."""

from __future__ import annotations

import ctypes
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshagent.datapath import probes
from vmnet import VethPair

pytestmark = pytest.mark.kernel

PROG = Path(__file__).with_name("progs") / "icmp_gate.c"
# Slots of vmt_counts: must match VMT_SEEN / VMT_DROPPED in progs/icmp_gate.c.
VMT_SEEN = 0
VMT_DROPPED = 1


@pytest.fixture(scope="session")
def icmp_gate() -> Iterator[Any]:
    # Compiled once per session: a BCC compile costs ~24 s inside a TCG guest.
    from bcc import BPF

    bpf = BPF(src_file=str(PROG).encode())  # bytes: BCC warns about a str
    try:
        yield bpf
    finally:
        bpf.cleanup()


def _ping(ns: str, addr: str, *, count: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", "-q", addr],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _counts(bpf: Any) -> tuple[int, int]:
    table = bpf[b"vmt_counts"]
    return int(table[ctypes.c_int(VMT_SEEN)].value), int(table[ctypes.c_int(VMT_DROPPED)].value)


def test_tc_program_counts_then_drops_real_pings(icmp_gate: Any, veth_pair: VethPair) -> None:
    if why := probes.missing(probes.Feature.CLSACT_CLS_BPF):
        pytest.skip(why)
    from bcc import BPF
    from pyroute2 import IPRoute

    fn = icmp_gate.load_func(b"vmt_ingress", BPF.SCHED_CLS)
    icmp_gate[b"vmt_gate"][ctypes.c_int(0)] = ctypes.c_uint32(0)
    seen0, dropped0 = _counts(icmp_gate)

    with IPRoute(netns=veth_pair.ns_b) as ipr:
        idx = ipr.link_lookup(ifname=veth_pair.dev_b)[0]
        ipr.tc("add", "clsact", idx)
        ipr.tc(
            "add-filter",
            "bpf",
            idx,
            ":1",
            fd=fn.fd,
            name=fn.name,
            parent="ffff:fff2",
            classid=1,
            direct_action=True,
        )

    # Open gate: echo requests reach b's ingress, are counted, and answered.
    ok = _ping(veth_pair.ns_a, veth_pair.ip_b, count=3)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    seen1, dropped1 = _counts(icmp_gate)
    assert seen1 - seen0 >= 3
    assert dropped1 == dropped0

    # Closed gate: the program drops every echo request, so ping gets no reply.
    icmp_gate[b"vmt_gate"][ctypes.c_int(0)] = ctypes.c_uint32(1)
    blocked = _ping(veth_pair.ns_a, veth_pair.ip_b, count=2)
    assert blocked.returncode != 0, blocked.stdout
    seen2, dropped2 = _counts(icmp_gate)
    assert dropped2 - dropped1 >= 2
    assert seen2 - seen1 >= 2

    # Open again: the drop was the program's doing, not a broken link.
    icmp_gate[b"vmt_gate"][ctypes.c_int(0)] = ctypes.c_uint32(0)
    again = _ping(veth_pair.ns_a, veth_pair.ip_b, count=1)
    assert again.returncode == 0, again.stdout + again.stderr
