"""Sends and captures whole Ethernet frames on one interface through a packet socket, for tests that
craft packets (run inside a network namespace with `ip netns exec NS python -m ...`).

    send IFNAME HEX [HEX ...]        send each frame (hex) as is; print how many were dropped on the way out
    capture IFNAME [MARKER]          print "ready", then each received frame as hex (only those holding the
                                      hex MARKER, when given) until stdin is closed

Frames sent from a namespace leave through the interface's tc egress hook, so a frame sent on a pod's
host-side veth in the node namespace meets the program that guards traffic entering the pod.
"""

from __future__ import annotations

import errno
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003


def send(ifname: str, frames: list[bytes]) -> int:
    """Sends each frame; returns how many the interface's egress path dropped at once (a tc program's
    drop shows as ENOBUFS to the sender)."""
    dropped = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for frame in frames:
            try:
                sock.send(frame)
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                dropped += 1
    return dropped


def capture(ifname: str, marker: bytes | None, *, limit_s: float = 120.0) -> None:
    """Prints "ready", then each received frame (holding `marker`) as hex, until stdin is closed."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.bind((ifname, 0))
        print("ready", flush=True)
        deadline = time.monotonic() + limit_s
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sock, sys.stdin], [], [], left)
            if sock in readable:
                frame, address = sock.recvfrom(65535)
                if address[2] != socket.PACKET_OUTGOING and (marker is None or marker in frame):
                    print(frame.hex(), flush=True)
            elif sys.stdin in readable and not sys.stdin.readline():
                return


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "send":
        print(send(argv[1], [bytes.fromhex(h) for h in argv[2:]]))
        return 0
    if len(argv) in (2, 3) and argv[0] == "capture":
        capture(argv[1], bytes.fromhex(argv[2]) if len(argv) == 3 else None)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
