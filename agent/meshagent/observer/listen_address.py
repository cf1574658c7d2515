"""The agent's HTTP listening addresses (metrics, health): `HOST:PORT`, `[IPV6]:PORT`, or `:PORT` for
every address of both families.

On an IPv6-only node there is no IPv4 address for Prometheus to scrape the agent by, and a listener on
0.0.0.0 would be unreachable; `:PORT` serves both families from one IPv6 socket that also accepts IPv4
(as v4-mapped addresses). On a kernel with IPv6 turned off, `:PORT` falls back to 0.0.0.0.
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
from typing import Any, TypeVar

ServerType = TypeVar("ServerType", bound=socketserver.TCPServer)


class ListenAddressError(ValueError):
    pass


def split_listen_address(address: str, *, setting: str = "address") -> tuple[str, int]:
    """`HOST:PORT`, `[IPV6]:PORT` or `:PORT` (port 0: any free port) into host and port; the host is ""
    for every address. A bare IPv6 address without brackets is refused: its last group would be taken
    for the port."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ListenAddressError(f"{setting} must be HOST:PORT, [IPV6]:PORT or :PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ListenAddressError(f"{setting}: {host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ListenAddressError(f"{setting}: write an IPv6 address in brackets, e.g. [{host}]:{port_text}")
    return host, int(port_text)


def ipv6_available() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


def bind_host(host: str) -> tuple[socket.AddressFamily, str]:
    """The family and address to bind for `host` ("" is every address of both families)."""
    if not host:
        return (socket.AF_INET6, "::") if ipv6_available() else (socket.AF_INET, "0.0.0.0")
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:  # a name: the family of its first address
        family, _, _, _, sockaddr = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0]
        return socket.AddressFamily(family), str(sockaddr[0])
    return (socket.AF_INET6 if version == 6 else socket.AF_INET), host


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port ("": every address of both families, on one port even when port
    is 0), not yet listening."""
    family, bound_host = bind_host(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and ipaddress.ip_address(bound_host).is_unspecified:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((bound_host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def make_server(
    server_type: type[ServerType], address: str, *args: Any, setting: str = "address"
) -> ServerType:
    """A `server_type` (a socketserver.TCPServer) bound to `address`; `args` follow the server address
    in its constructor (the handler class, ...). The wildcard IPv6 socket takes IPv4 too, whatever the
    node's net.ipv6.bindv6only says."""
    host, port = split_listen_address(address, setting=setting)
    family, bound_host = bind_host(host)
    both_families = family == socket.AF_INET6 and ipaddress.ip_address(bound_host).is_unspecified

    class Server(server_type):  # type: ignore[valid-type,misc]
        address_family = family

        def server_bind(self) -> None:
            if both_families:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    Server.__name__ = server_type.__name__
    return Server((bound_host, port), *args)
