"""Run inside a pod: one TCP connection to an echo server kept busy with small exchanges (every 20 ms)
until a stop file appears; prints JSON: exchanges that worked, that failed, and the longest gap between
two that worked (what a peer update, an agent restart or a key rotation cost the connection).

    python streamprobe.py IP PORT STOP_FILE [MARKER]
    python streamprobe.py once IP PORT MARKER       one echo of MARKER; exit status 0 if it came back
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time


def once(ip: str, port: int, marker: bytes) -> int:
    try:
        with socket.create_connection((ip, port), timeout=5) as sock:
            sock.settimeout(5)
            sock.sendall(marker)
            received = b""
            while len(received) < len(marker):
                chunk = sock.recv(len(marker) - len(received))
                if not chunk:
                    break
                received += chunk
    except OSError:
        return 1
    return 0 if received == marker else 1


def main() -> int:
    if sys.argv[1] == "once":
        return once(sys.argv[2], int(sys.argv[3]), sys.argv[4].encode())
    ip, port, stop_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    marker = (sys.argv[4] if len(sys.argv) > 4 else "ping").encode()
    sock = socket.create_connection((ip, port), timeout=10)
    # Long: a key rotation or restart may stall the connection for seconds; TCP retransmits meanwhile.
    sock.settimeout(60)
    print("connected", flush=True)
    ok = failed = 0
    longest = 0.0
    last = time.monotonic()
    while not os.path.exists(stop_file):
        try:
            sock.sendall(marker)
            received = b""
            while len(received) < len(marker):
                chunk = sock.recv(len(marker) - len(received))
                if not chunk:
                    raise ConnectionResetError("closed by the server")
                received += chunk
            if received == marker:
                ok += 1
                now = time.monotonic()
                longest = max(longest, now - last)
                last = now
        except OSError:
            failed += 1
            break
        time.sleep(0.02)
    sock.close()
    print(json.dumps({"ok": ok, "failed": failed, "max_gap_ms": round(longest * 1000, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
