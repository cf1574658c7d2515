"""Traffic tool run inside a pod's network namespace: echo servers and one-shot clients.

Standard library only and quick to start, since tests run it once per probe. Exit status 0 means the
exchange completed (the echo came back), 1 that it did not (timeout, refused, reset).

  python -m meshagent.testing.netprobe serve --tcp 80,81 --udp 80 --log FILE
  python -m meshagent.testing.netprobe tcp IP PORT [--timeout S] [--size N] [--bind IP]
  python -m meshagent.testing.netprobe udp IP PORT [--timeout S] [--size N] [--bind IP]
  python -m meshagent.testing.netprobe talk IP PORT --seconds S   one connection kept busy: prints
      "connected", then "<exchanges that worked> <exchanges that failed>" at the end
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import threading
import time


def _log_line(path: str | None, text: str) -> None:
    if path is None:
        return
    # One write per line with O_APPEND keeps lines whole between threads.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def _serve_tcp_conn(conn: socket.socket, log: str | None, peer: tuple[str, int], port: int) -> None:
    _log_line(log, f"tcp {peer[0]}:{peer[1]} {port}")
    with conn:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            conn.sendall(data)


def _listening(family: int, kind: int, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    if family == socket.AF_INET6:
        # IPv4 stays on its own socket, so IPv4 peers are logged as plain IPv4 addresses.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    return sock


def serve(tcp_ports: list[int], udp_ports: list[int], log: str | None, *, ipv6: bool = False) -> None:
    selector = selectors.DefaultSelector()
    families = (socket.AF_INET, socket.AF_INET6) if ipv6 else (socket.AF_INET,)
    for family in families:
        for port in tcp_ports:
            selector.register(
                _listening(family, socket.SOCK_STREAM, port), selectors.EVENT_READ, ("tcp", port)
            )
        for port in udp_ports:
            selector.register(
                _listening(family, socket.SOCK_DGRAM, port), selectors.EVENT_READ, ("udp", port)
            )
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            kind, port = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if kind == "tcp":
                conn, peer = sock.accept()
                threading.Thread(target=_serve_tcp_conn, args=(conn, log, peer, port), daemon=True).start()
            else:
                data, peer = sock.recvfrom(65535)
                _log_line(log, f"udp {peer[0]}:{peer[1]} {port}")
                sock.sendto(data, peer)


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _payload(size: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(size))


def tcp_exchange(ip: str, port: int, *, timeout: float, size: int, bind: str | None) -> dict[str, object]:
    payload = _payload(size)
    start = time.monotonic()
    sock = socket.socket(_family(ip), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if bind:
            sock.bind((bind, 0))
        sock.connect((ip, port))
        local_port = sock.getsockname()[1]
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        ok = received == payload
        return {"ok": ok, "sport": local_port, "ms": round((time.monotonic() - start) * 1000, 1)}
    except OSError as err:
        return {"ok": False, "error": type(err).__name__, "ms": round((time.monotonic() - start) * 1000, 1)}
    finally:
        sock.close()


def udp_exchange(ip: str, port: int, *, timeout: float, size: int, bind: str | None) -> dict[str, object]:
    payload = _payload(size)
    start = time.monotonic()
    family = _family(ip)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.bind((bind or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
        sock.connect((ip, port))
        local_port = sock.getsockname()[1]
        sock.send(payload)
        data = sock.recv(65535)
        return {"ok": data == payload, "sport": local_port, "ms": round((time.monotonic() - start) * 1000, 1)}
    except OSError as err:
        return {"ok": False, "error": type(err).__name__, "ms": round((time.monotonic() - start) * 1000, 1)}
    finally:
        sock.close()


def talk(ip: str, port: int, *, seconds: float) -> tuple[int, int]:
    """Keeps one TCP connection busy with small echoes. A loaded machine may stall a while (hence the long
    timeout); a connection the datapath dropped never recovers, so every exchange after it fails."""
    sock = socket.create_connection((ip, port), timeout=10)
    print("connected", flush=True)
    ok = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sock.sendall(b"ping")
            ok += sock.recv(4) == b"ping"
        except OSError:
            failed += 1
        time.sleep(0.05)
    sock.close()
    return ok, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netprobe")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve")
    serve_p.add_argument("--tcp", default="")
    serve_p.add_argument("--udp", default="")
    serve_p.add_argument("--log")
    serve_p.add_argument("--ipv6", action="store_true", help="also listen on IPv6")
    for name in ("tcp", "udp"):
        client = sub.add_parser(name)
        client.add_argument("ip")
        client.add_argument("port", type=int)
        client.add_argument("--timeout", type=float, default=1.0)
        client.add_argument("--size", type=int, default=32)
        client.add_argument("--bind")
    talk_p = sub.add_parser("talk")
    talk_p.add_argument("ip")
    talk_p.add_argument("port", type=int)
    talk_p.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)

    if args.command == "talk":
        ok, failed = talk(args.ip, args.port, seconds=args.seconds)
        print(ok, failed, flush=True)
        return 0
    if args.command == "serve":
        ports = [int(p) for p in args.tcp.split(",") if p], [int(p) for p in args.udp.split(",") if p]
        serve(ports[0], ports[1], args.log, ipv6=args.ipv6)
        return 0
    exchange = tcp_exchange if args.command == "tcp" else udp_exchange
    result = exchange(args.ip, args.port, timeout=args.timeout, size=args.size, bind=args.bind)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
