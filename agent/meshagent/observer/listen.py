"""Where and how the flow API listens: the Unix socket and TCP addresses, TLS, the server's limits, and
binding them. A leaf that both the agent's side (server.py, frontlink.py) and the front process
(frontproc.py) use, so that the front process imports no part of the agent's ingest side.
"""

from __future__ import annotations

import grp
import os
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path

from meshagent.observer.h2server import H2GrpcServer
from meshagent.observer.limits import DEFAULT_LIMITS, ServerLimits
from meshagent.observer.listen_address import ListenAddressError, split_listen_address

DEFAULT_SOCKET = Path("/var/run/meshagent/observer.sock")
DEFAULT_TCP_PORT = 4245  # Hubble's port


class ServerConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: clients must present a certificate signed by this CA

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # gRPC runs on HTTP/2, which clients ask for by ALPN (grpc-go refuses a server that ignores it).
        ctx.set_alpn_protocols(["h2"])
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file is not None:
                ctx.load_verify_locations(cafile=self.client_ca_file)
                ctx.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as err:
            raise ServerConfigError(f"cannot load TLS material: {err}") from err
        return ctx


@dataclass(frozen=True)
class ServerConfig:
    unix_socket: Path | None = DEFAULT_SOCKET
    tcp_address: str | None = None  # e.g. "0.0.0.0:4245"
    tls: TlsConfig | None = None
    allow_insecure_tcp: bool = False  # plaintext TCP only when asked for explicitly
    limits: ServerLimits = field(default=DEFAULT_LIMITS)  # observer/limits.py
    socket_group: str | None = None  # set: the socket is 0660 and this group's (name or number)
    front_process: bool = False  # serve from a separate process (observer/frontlink.py)
    front_log_format: str = "auto"  # the front process's logs: as the agent's log_format
    # The front process's user and group after binding (root starts it; None: keep the agent's).
    front_user: int | None = 65534  # nobody
    front_group: int | None = 65534  # nogroup

    def __post_init__(self) -> None:
        if self.socket_group is not None:
            group_id(self.socket_group)  # an unknown group fails here, before anything starts


def group_id(group: str | int) -> int:
    """A group's number from its name or number; ServerConfigError if there is no such group."""
    text = str(group)
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ServerConfigError(f"no such group: {text!r}") from None


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT, [IPV6]:PORT, or :PORT for every address of both families (host "")."""
    try:
        return split_listen_address(address, setting="TCP address")
    except ListenAddressError as err:
        raise ServerConfigError(str(err)) from None


def bind_unix(server: H2GrpcServer, path: Path, group: str | None = None) -> None:
    """Binds `path`, owner-only (0600), or 0660 for `group`. A socket left by a previous run is replaced;
    anything else at the path (a file, a directory, a symbolic link) is an error and stays untouched."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            st = path.lstat()
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise ServerConfigError(
                    f"cannot listen on unix:{path}: it exists and is not a socket (left untouched)"
                )
            path.unlink()  # stale socket from a previous run
        server.listen_unix(path)
        if group is not None:
            os.chown(path, -1, group_id(group))
            os.chmod(path, 0o660)
    except OSError as err:
        raise ServerConfigError(f"cannot listen on unix:{path}: {err}") from err


def bind_tcp(server: H2GrpcServer, address: str, ssl_context: ssl.SSLContext | None) -> int:
    host, port = split_address(address)
    try:
        return server.listen_tcp(host, port, ssl_context)
    except OSError as err:
        raise ServerConfigError(f"cannot listen on {address}: {err}") from err


def start_listening(
    server: H2GrpcServer,
    *,
    unix_socket: Path | None,
    socket_group: str | None,
    tcp_address: str | None,
    ssl_context: ssl.SSLContext | None,
) -> int | None:
    """Starts `server` on its Unix socket and TCP address (the TCP port is returned); if a listener
    cannot be bound the server is stopped again and the error raised."""
    server.start()
    try:
        if unix_socket is not None:
            bind_unix(server, unix_socket, socket_group)
        return bind_tcp(server, tcp_address, ssl_context) if tcp_address is not None else None
    except Exception:
        server.stop(grace=None)
        raise


def describe_listeners(unix_socket: Path | None, tcp_port: int | None, tls: bool) -> str:
    """Where a server listens, for its log line."""
    where = [str(unix_socket)] if unix_socket else []
    if tcp_port:
        where.append(f"tcp:{tcp_port}" + (" (TLS)" if tls else " (plaintext)"))
    return ", ".join(where)
