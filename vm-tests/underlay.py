"""What crosses the underlay between nodes: every frame on the underlay namespace's interfaces, captured
with an AF_PACKET socket opened inside that namespace, so a test can check what an observer on the wire
between nodes would see."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from meshagent.datapath.netns import open_in_netns

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4


@dataclass
class Capture:
    frames: list[bytes] = field(default_factory=list)

    def ipv4(self) -> Iterator[tuple[IPv4Address, IPv4Address, int, bytes]]:
        """(source, destination, protocol, the IP packet) of each IPv4 frame."""
        for frame in self.frames:
            if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
                continue
            packet = frame[14:]
            yield IPv4Address(packet[12:16]), IPv4Address(packet[16:20]), packet[9], packet

    def ipv6(self) -> Iterator[tuple[IPv6Address, IPv6Address]]:
        """(source, destination) of each IPv6 frame."""
        for frame in self.frames:
            if len(frame) < 54 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IPV6:
                continue
            packet = frame[14:]
            yield IPv6Address(packet[8:24]), IPv6Address(packet[24:40])

    def addresses(self) -> set[IPv4Address | IPv6Address]:
        """Every address in an IP header on the wire, of both families."""
        found: set[IPv4Address | IPv6Address] = set()
        for src, dst, _, _ in self.ipv4():
            found |= {src, dst}
        for src6, dst6 in self.ipv6():
            found |= {src6, dst6}
        return found

    def contains(self, data: bytes) -> bool:
        return any(data in frame for frame in self.frames)

    def udp_to_port(self, port: int) -> int:
        count = 0
        for _, _, proto, packet in self.ipv4():
            header = (packet[0] & 0x0F) * 4
            if (
                proto == 17
                and len(packet) >= header + 4
                and struct.unpack_from("!H", packet, header + 2)[0] == port
            ):
                count += 1
        return count


@contextmanager
def capture(netns: str) -> Iterator[Capture]:
    """Captures every frame received on any interface of `netns` until the block ends (each frame is
    seen once per bridge port it enters; frames sent by the namespace itself are skipped)."""
    sock = open_in_netns(
        netns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    )
    result = Capture()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.1)
            if not ready:
                continue
            data, address = sock.recvfrom(65535)
            if address[2] != PACKET_OUTGOING:
                result.frames.append(data)

    thread = threading.Thread(target=reader, name="underlay-capture", daemon=True)
    thread.start()
    try:
        yield result
    finally:
        time.sleep(0.3)  # frames in flight when the block ended
        stop.set()
        thread.join(timeout=5)
        sock.close()
