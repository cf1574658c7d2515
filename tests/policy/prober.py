"""Many TCP/UDP echo probes at once from inside one pod's network namespace (conformance tests).

stdin: {"timeout": S, "probes": [["tcp"|"udp", IP, PORT], ...]}; stdout: a JSON list of booleans, true
when the echo came back. Standard library only; run with `ip netns exec NS python prober.py`.
"""

from __future__ import annotations

import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

PAYLOAD = b"meshagent-conformance"


def probe(proto: str, ip: str, port: int, timeout: float) -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
            sock.sendall(PAYLOAD) if proto == "tcp" else sock.send(PAYLOAD)
            received = b""
            while len(received) < len(PAYLOAD):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
            return received == PAYLOAD
        except OSError:
            return False


def main() -> int:
    request = json.load(sys.stdin)
    timeout = float(request["timeout"])
    probes = request["probes"]
    with ThreadPoolExecutor(max_workers=max(1, len(probes))) as pool:
        results = list(pool.map(lambda p: probe(p[0], p[1], int(p[2]), timeout), probes))
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
