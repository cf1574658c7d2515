"""Crafted frames for datapath tests: built with scapy, sent through a packet socket on a real veth, and
captured where they should (or should not) arrive (packet sockets opened inside each namespace, used
from this process)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from meshagent.datapath.datapath import Datapath
from meshagent.model.events import DropReason
from meshagent.model.kernel_state import Direction
from meshagent.testing import rawframes
from meshagent.testing.netns_sockets import open_in
from meshagent.testing.topology import Pod, Topology
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from tests.waiting import wait_until

# How long after the last frame is sent a capture keeps listening, and how long a counter may take to
# move: generous, as the kernel matrix runs under emulation.
SETTLE_S = 0.5
COUNTER_WAIT_S = 15.0


def link_mac(netns: str, ifname: str) -> str:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "link", "show", "dev", ifname], capture_output=True, text=True, check=True
    ).stdout
    return str(json.loads(out)[0]["address"])


@dataclass
class Capture:
    frames: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)


class Wire:
    """Both ends of one pod's veth: frames sent from the pod (through the program guarding its egress)
    and injected towards it from the node side (through the program guarding its ingress)."""

    def __init__(self, topo: Topology, pod: Pod) -> None:
        self.topo = topo
        self.pod = pod
        self.pod_mac = link_mac(pod.netns, "eth0")
        self.host_mac = link_mac(topo.node, pod.host_ifname)

    def from_pod(self, *packets: Packet, ether_type: int | None = None) -> None:
        self._send(
            self.pod.netns, "eth0", [self._frame(p, self.pod_mac, self.host_mac, ether_type) for p in packets]
        )

    def to_pod(self, *packets: Packet, ether_type: int | None = None) -> None:
        frames = [self._frame(p, self.host_mac, self.pod_mac, ether_type) for p in packets]
        self._send(self.topo.node, self.pod.host_ifname, frames)

    @contextmanager
    def capture_in_pod(self, marker: bytes) -> Iterator[Capture]:
        """Frames holding `marker` that reach the pod's eth0 while the block runs, and for a moment after
        (a frame sent is on its way by the time send returns; SETTLE_S lets it arrive)."""
        captured = Capture()
        sock = open_in(self.pod.netns, lambda: rawframes.open_capture("eth0"))
        try:
            yield captured
            time.sleep(SETTLE_S)
            captured.frames.extend(rawframes.received(sock, marker))
        finally:
            sock.close()

    @staticmethod
    def _frame(packet: Packet, src: str, dst: str, ether_type: int | None) -> bytes:
        if isinstance(packet, Ether):
            return bytes(packet)
        ether = Ether(src=src, dst=dst) if ether_type is None else Ether(src=src, dst=dst, type=ether_type)
        return bytes(ether / packet)

    @staticmethod
    def _send(netns: str, ifname: str, frames: list[bytes]) -> None:
        sock = open_in(netns, lambda: rawframes.open_sender(ifname))
        try:
            rawframes.send(sock, frames)
        finally:
            sock.close()


class Counters:
    """Packets counted by the datapath per (reason, direction) since construction."""

    def __init__(self, datapath: Datapath) -> None:
        self._datapath = datapath
        self._start = {k: v.packets for k, v in datapath.counters().items()}

    def delta(self, reason: DropReason, direction: Direction) -> int:
        now = self._datapath.counters()[(reason, direction)].packets
        return now - self._start[(reason, direction)]

    def wait_for(self, reason: DropReason, direction: Direction, *, at_least: int = 1) -> int:
        wait_until(lambda: self.delta(reason, direction) >= at_least, COUNTER_WAIT_S, interval=0.02)
        return self.delta(reason, direction)
