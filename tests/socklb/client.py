"""Socket client run inside a pod's network namespace (and, for the tests, inside the test cgroup).

Standard library only; run as a file. Prints one JSON line. An address with a colon is used on an IPv6
socket (so ::ffff:a.b.c.d is IPv4 through a dual-stack socket); IPv6 peers are printed as [addr]:port.

  client.py tcp IP PORT [--count N]         N connections: connect, getpeername, echo, close
  client.py udp IP PORT [--count N]         N connected UDP sockets: connect, getpeername, echo
  client.py udp-unconnected IP PORT [--count N]   sendto/recvfrom; reports the reply's source
  client.py hold IP PORT                    one TCP connection: echo, print, wait for a stdin line, echo
  client.py sizes IP PORT --sizes 1,1024    one connection per size: send that many bytes, expect them back
  client.py serve IP PORT                   TCP echo server (a thread per connection); prints "ready"
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import socket
import sys
import threading
import time

PAYLOAD = bytes(range(64))


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _endpoint(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error(err: OSError) -> str:
    return errno.errorcode.get(err.errno or 0, type(err).__name__)


def _echo(sock: socket.socket) -> bool:
    sock.sendall(PAYLOAD)
    received = b""
    while len(received) < len(PAYLOAD):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received == PAYLOAD


def _connected(kind: int, ip: str, port: int, count: int, timeout: float) -> dict[str, object]:
    ok = 0
    errors: dict[str, int] = {}
    peers: set[str] = set()
    slowest = 0.0
    for _ in range(count):
        start = time.monotonic()
        sock = socket.socket(_family(ip), kind)
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
            peers.add(_endpoint(sock.getpeername()))
            if _echo(sock):
                ok += 1
            else:
                errors["mismatch"] = errors.get("mismatch", 0) + 1
        except OSError as err:
            errors[_error(err)] = errors.get(_error(err), 0) + 1
        finally:
            sock.close()
            slowest = max(slowest, time.monotonic() - start)
    return {"ok": ok, "errors": errors, "peers": sorted(peers), "slowest_ms": round(slowest * 1000, 2)}


def _unconnected(ip: str, port: int, count: int, timeout: float) -> dict[str, object]:
    ok = 0
    errors: dict[str, int] = {}
    sources: set[str] = set()
    slowest = 0.0
    sock = socket.socket(_family(ip), socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.bind(("::" if _family(ip) == socket.AF_INET6 else "0.0.0.0", 0))
    for _ in range(count):
        start = time.monotonic()
        try:
            sock.sendto(PAYLOAD, (ip, port))
            data, source = sock.recvfrom(65535)
            sources.add(_endpoint(source))
            if data == PAYLOAD:
                ok += 1
        except OSError as err:
            errors[_error(err)] = errors.get(_error(err), 0) + 1
        slowest = max(slowest, time.monotonic() - start)
    sock.close()
    return {"ok": ok, "errors": errors, "sources": sorted(sources), "slowest_ms": round(slowest * 1000, 2)}


def _hold(ip: str, port: int, timeout: float) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((ip, port))
    print(json.dumps({"first": _echo(sock), "sport": sock.getsockname()[1]}), flush=True)
    sys.stdin.readline()
    try:
        second = _echo(sock)
    except OSError as err:
        print(json.dumps({"second": False, "error": _error(err)}), flush=True)
        return 1
    print(json.dumps({"second": second}), flush=True)
    sock.close()
    return 0


def _pattern(size: int) -> bytes:
    return bytes((i * 31 + 7) % 256 for i in range(min(size, 65536))) * (size // 65536 + 1)


def _sizes(ip: str, port: int, sizes: list[int], timeout: float) -> dict[str, object]:
    results: dict[str, object] = {}
    for size in sizes:
        payload = _pattern(size)[:size]
        sock = socket.create_connection((ip, port), timeout=timeout)
        # Send from a thread while reading here: the echo comes back while we still send.
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = bytearray()
        try:
            while len(received) < size:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
        except OSError as err:
            results[str(size)] = _error(err)
        else:
            same = hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            results[str(size)] = "identical" if same else f"differs ({len(received)} bytes)"
        sender.join()
        sock.close()
    return {"sizes": results}


def _echo_conn(conn: socket.socket) -> None:
    with conn:
        while True:
            try:
                data = conn.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            conn.sendall(data)


def _serve(ip: str, port: int) -> int:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual-stack: IPv4 as v4-mapped
    server.bind((ip, port))
    server.listen(128)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_echo_conn, args=(conn,), daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["tcp", "udp", "udp-unconnected", "hold", "sizes", "serve"])
    parser.add_argument("ip")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--sizes", default="1")
    args = parser.parse_args()
    if args.mode == "serve":
        return _serve(args.ip, args.port)
    if args.mode == "sizes":
        print(json.dumps(_sizes(args.ip, args.port, [int(n) for n in args.sizes.split(",")], args.timeout)))
        return 0
    if args.mode == "hold":
        return _hold(args.ip, args.port, args.timeout)
    if args.mode == "udp-unconnected":
        result = _unconnected(args.ip, args.port, args.count, args.timeout)
    else:
        kind = socket.SOCK_STREAM if args.mode == "tcp" else socket.SOCK_DGRAM
        result = _connected(kind, args.ip, args.port, args.count, args.timeout)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
