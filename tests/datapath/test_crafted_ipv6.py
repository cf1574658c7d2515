"""Hostile and unlucky IPv6 packets, crafted with scapy and sent through real veths (as test_crafted.py
does for IPv4): extension-header chains, fragments, ICMPv6 errors and spoofed sources. Each case checks
the datapath's verdict (counters, events) and what arrived on the other side."""

from __future__ import annotations

import subprocess
import sys

import pytest
from meshagent.datapath.datapath import Datapath
from meshagent.model.events import DropReason, EventType
from meshagent.model.kernel_state import Action, Direction, PolicyEntry, Protocol
from meshagent.testing.topology import Pod, Topology
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.packet import Packet, Raw

from tests.datapath.crafted import Counters, Wire
from tests.datapath.helpers import EventLog, endpoint, identity_of, state
from tests.waiting import wait_until

pytestmark = pytest.mark.kernel

ETH_P_IPV6 = 0x86DD


def allow(endpoint_id: int, peer: int, protocol: Protocol, port: int) -> PolicyEntry:
    return PolicyEntry(endpoint_id, Direction.INGRESS, peer, protocol, port, port, Action.ALLOW, 8)


def v6(pod: Pod) -> str:
    assert pod.ipv6 is not None
    return str(pod.ipv6)


def echoes_from(frames: list[bytes], pod: Pod) -> list[Packet]:
    """The IPv6 packets among `frames` that `pod` sent."""
    return [IPv6(f[14:]) for f in frames if f[12:14] == b"\x86\xdd" and IPv6(f[14:]).src == v6(pod)]


@pytest.fixture
def trio(datapath: Datapath, topo: Topology) -> tuple[Pod, Pod, Pod]:
    """a sends; b (under ingress policy: a on UDP 5000 only) and c (not under policy) echo UDP 5000, 6000."""
    a = topo.add_pod("a", "10.244.8.10", ipv6="fd00:8::10")
    b = topo.add_pod("b", "10.244.8.20", ipv6="fd00:8::20")
    c = topo.add_pod("c", "10.244.8.30", ipv6="fd00:8::30")
    b.serve(udp=(5000, 6000))
    c.serve(udp=(5000, 6000))
    datapath.apply(
        state(
            [endpoint(a, 1), endpoint(b, 2, enforce_ingress=True), endpoint(c, 3)],
            [a, b, c],
            [allow(2, identity_of(a), Protocol.UDP, 5000)],
        )
    )
    return a, b, c


def test_extension_header_chains_are_walked_and_bounded(
    datapath: Datapath, topo: Topology, trio: tuple[Pod, Pod, Pod]
) -> None:
    a, b, c = trio
    wire_a = Wire(topo, a)
    marker = b"ma-v6-ext-chain"

    def chain(dst: Pod, dport: int, headers: list[Packet]) -> Packet:
        packet: Packet = IPv6(src=v6(a), dst=v6(dst))
        for header in headers:
            packet = packet / header
        return packet / UDP(sport=43000, dport=dport) / Raw(marker)

    usual = [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(type=0, segleft=0)]
    counters = Counters(datapath)
    with wire_a.capture_in_pod(marker) as echoed:
        for port in (5000, 6000):
            wire_a.from_pod(chain(b, port, usual), ether_type=ETH_P_IPV6)
    # The ports are found behind the chain: the allowed one is echoed, the other dropped by policy.
    assert sorted(p[UDP].sport for p in echoes_from(echoed.frames, b)) == [5000]
    assert counters.wait_for(DropReason.POLICY_DEFAULT_DENY, Direction.INGRESS) == 1

    # Longer than the walk (9 headers, 8 are walked): the transport header stays hidden, so the packet
    # is malformed for the pod under policy, even to the allowed port; untouched for the pod that is not.
    too_long = [IPv6ExtHdrDestOpt() for _ in range(9)]
    counters = Counters(datapath)
    with wire_a.capture_in_pod(marker) as echoed:
        wire_a.from_pod(chain(b, 5000, too_long), ether_type=ETH_P_IPV6)
        wire_a.from_pod(chain(c, 5000, too_long), ether_type=ETH_P_IPV6)
    assert counters.wait_for(DropReason.MALFORMED, Direction.INGRESS) == 1
    assert not echoes_from(echoed.frames, b)
    assert echoes_from(echoed.frames, c), "the pod not under policy got it (its kernel answered)"


def test_fragments_follow_their_first_fragment(
    datapath: Datapath, topo: Topology, trio: tuple[Pod, Pod, Pod]
) -> None:
    a, b, _c = trio
    wire_a = Wire(topo, a)
    marker = b"ma-v6-fragments"

    def datagram(dport: int, ident: int) -> list[Packet]:
        packet = (
            IPv6(src=v6(a), dst=v6(b))
            / IPv6ExtHdrFragment(id=ident)
            / UDP(sport=43001, dport=dport)
            / Raw(marker * 60)
        )
        return list(fragment6(packet, 500))

    whole = datagram(5000, 0x4D41)
    assert len(whole) >= 3
    with wire_a.capture_in_pod(marker) as echoed:
        wire_a.from_pod(*whole, ether_type=ETH_P_IPV6)
    assert echoes_from(echoed.frames, b), "an allowed fragmented datagram is delivered"

    # Out of order: a later fragment first cannot be attributed; the datagram is never whole.
    counters = Counters(datapath)
    frags = datagram(5000, 0x4D42)
    with wire_a.capture_in_pod(marker) as echoed:
        wire_a.from_pod(frags[1], frags[0], *frags[2:], ether_type=ETH_P_IPV6)
    assert counters.wait_for(DropReason.FRAG_NO_FIRST, Direction.INGRESS) >= 1
    assert not echoes_from(echoed.frames, b)

    # A second first fragment of the same datagram claiming the denied port is judged by its own header.
    allowed, rewritten = datagram(5000, 0x4D43), datagram(6000, 0x4D43)[0]
    counters = Counters(datapath)
    with wire_a.capture_in_pod(marker) as echoed:
        wire_a.from_pod(allowed[0], rewritten, *allowed[1:], ether_type=ETH_P_IPV6)
    assert counters.wait_for(DropReason.POLICY_DEFAULT_DENY, Direction.INGRESS) >= 1
    assert not [p for p in echoes_from(echoed.frames, b) if p[UDP].sport == 6000]


def test_spoofed_ipv6_sources_do_not_leave_the_pod(
    datapath: Datapath, topo: Topology, trio: tuple[Pod, Pod, Pod], events: EventLog
) -> None:
    a, _b, c = trio
    wire_a = Wire(topo, a)
    marker = b"ma-v6-spoofed"
    wire_c = Wire(topo, c)
    counters = Counters(datapath)
    with wire_c.capture_in_pod(marker) as arrived:
        for source in ("fd00:8::99", v6(c), "fe80::4d41"):  # another address, c's own, a link-local one
            wire_a.from_pod(
                IPv6(src=source, dst=v6(c)) / UDP(sport=43002, dport=5000) / Raw(marker),
                ether_type=ETH_P_IPV6,
            )
        wire_a.from_pod(IPv6(src=v6(a), dst=v6(c)) / UDP(sport=43002, dport=5000) / Raw(marker))
    assert counters.wait_for(DropReason.SPOOFED_SOURCE, Direction.EGRESS, at_least=3) == 3
    assert {IPv6(f[14:]).src for f in arrived.frames} == {v6(a)}, "only a's own source arrives"
    drops = events.wait_for(lambda e: e.drop_reason == DropReason.SPOOFED_SOURCE and e.endpoint_id == 1)
    assert drops and all(e.direction == Direction.EGRESS for e in drops)


_HELD_UDP6 = """
import errno, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, getattr(socket, "IPV6_RECVERR", 25), 1)  # errors not fatal too
s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2])))
print(s.getsockname()[1], flush=True)
for line in sys.stdin:
    try:
        s.send(b"u" * int(line)); s.recv(2000)
        print("ok", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
    except OSError as err:
        print("fail:" + errno.errorcode.get(err.errno or 0, type(err).__name__), flush=True)
"""


class HeldUdp6:
    """A connected UDP socket in a pod: `exchange(size)` sends a datagram and reads the echo."""

    def __init__(self, pod: Pod, ip: str, port: int) -> None:
        self.proc = pod.popen(
            sys.executable, "-c", _HELD_UDP6, ip, str(port),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().strip() or 0)
        assert self.port, self.proc.stderr.read() if self.proc.stderr else ""

    def exchange(self, size: int = 1) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{size}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_icmpv6_errors_pass_only_when_related_to_a_connection(
    datapath: Datapath, topo: Topology, events: EventLog
) -> None:
    a = topo.add_pod("a", "10.244.8.11", ipv6="fd00:8::11")
    b = topo.add_pod("b", "10.244.8.21", ipv6="fd00:8::21")
    b.serve(udp=(5000,))
    # a accepts nothing from outside: errors reach it only as related to its own datagrams.
    datapath.apply(state([endpoint(a, 1, enforce_ingress=True), endpoint(b, 2)], [a, b]))
    refused = HeldUdp6(a, v6(b), 5999)
    try:
        assert refused.exchange() == "refused", "b's kernel's port unreachable arrived"
    finally:
        refused.close()

    held = HeldUdp6(a, v6(b), 5000)
    try:
        assert held.exchange() == "ok"
        wire_a = Wire(topo, a)
        counters = Counters(datapath)

        def too_big(sport: int, mtu: int) -> Packet:
            quoted = IPv6(src=v6(a), dst=v6(b)) / UDP(sport=sport, dport=5000) / Raw(b"u" * 1400)
            return IPv6(src=v6(b), dst=v6(a)) / ICMPv6PacketTooBig(mtu=mtu) / bytes(quoted)[:1232]

        # Quoting no connection of a's: judged as ICMPv6 by a's policy, which allows nothing.
        wire_a.to_pod(too_big(held.port + 1, 1280), ether_type=ETH_P_IPV6)
        assert counters.wait_for(DropReason.POLICY_DEFAULT_DENY, Direction.INGRESS) == 1
        drops = events.wait_for(
            lambda e: e.type == EventType.DROP and e.protocol == 58 and e.endpoint_id == 1
        )
        assert drops and (drops[0].icmp_type, drops[0].icmp_code) == (2, 0), "the flow names the message"
        assert (drops[0].saddr, drops[0].daddr) == (b.ipv6, a.ipv6)
        # Quoting a's connection: related, passed; a's kernel learns the path MTU.
        wire_a.to_pod(too_big(held.port, 1280), ether_type=ETH_P_IPV6)

        def route() -> str:
            return a.run("ip", "-6", "route", "get", v6(b)).stdout

        assert wait_until(lambda: "mtu 1280" in route(), timeout=3, interval=0.05), route()
        # Destination unreachable quoting the connection: related too; the socket is told.
        quoted = IPv6(src=v6(a), dst=v6(b)) / UDP(sport=held.port, dport=5000) / Raw(b"u")
        wire_a.to_pod(
            IPv6(src=v6(b), dst=v6(a)) / ICMPv6DestUnreach(code=1) / bytes(quoted), ether_type=ETH_P_IPV6
        )
        assert held.exchange().startswith("fail:"), "the socket was told"
        assert counters.delta(DropReason.POLICY_DEFAULT_DENY, Direction.INGRESS) == 1
        assert held.exchange() == "ok"
    finally:
        held.close()
