"""Sends and captures whole Ethernet frames on one interface through packet sockets, for tests that
craft packets. The sockets belong to the network namespace they are opened in: open them inside a
namespace (meshagent.testing.netns_sockets does it in-process) and use them from anywhere.

Frames sent from a namespace leave through the interface's tc egress hook, so a frame sent on a pod's
host-side veth in the node namespace meets the program that guards traffic entering the pod.
"""

from __future__ import annotations

import errno
import select
import socket

ETH_P_ALL = 0x0003


def open_sender(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    return sock


def send(sock: socket.socket, frames: list[bytes]) -> int:
    """Sends each frame; returns how many the interface's egress path dropped at once (a tc program's
    drop shows as ENOBUFS to the sender)."""
    dropped = 0
    for frame in frames:
        try:
            sock.send(frame)
        except OSError as err:
            if err.errno != errno.ENOBUFS:
                raise
            dropped += 1
    return dropped


def open_capture(ifname: str) -> socket.socket:
    """A socket that receives every frame arriving on `ifname` from now on."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((ifname, 0))
    return sock


def received(sock: socket.socket, marker: bytes | None = None) -> list[bytes]:
    """The frames received so far (not those the interface sent), those holding `marker` when given."""
    frames = []
    while select.select([sock], [], [], 0)[0]:
        frame, address = sock.recvfrom(65535)
        if address[2] != socket.PACKET_OUTGOING and (marker is None or marker in frame):
            frames.append(frame)
    return frames
