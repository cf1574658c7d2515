"""Runs the Observer service: a Unix socket (owner-only) by default, optionally TCP with TLS (port 4245).

In this process (H2GrpcServer on a thread), or with `front_process=True` in a process of its own that
speaks gRPC and encodes flows while this one keeps the ring and answers queries (frontlink.py): the agent's
choice, where ingest and serving would otherwise share one interpreter lock.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from meshagent.observer.frontlink import FrontLink
from meshagent.observer.h2server import H2GrpcServer
from meshagent.observer.service import ObserverService, methods

logger = logging.getLogger(__name__)

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
    max_workers: int = 16  # GetFlows calls at once (each holds a thread); more get RESOURCE_EXHAUSTED
    front_process: bool = False  # serve from a separate process (observer/frontlink.py)
    front_log_format: str = "auto"  # the front process's logs: as the agent's log_format


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ServerConfigError(f"TCP address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


def bind_unix(server: H2GrpcServer, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            path.unlink()  # stale socket from a previous run
        server.listen_unix(path)
    except OSError as err:
        raise ServerConfigError(f"cannot listen on unix:{path}: {err}") from err


def bind_tcp(server: H2GrpcServer, address: str, ssl_context: ssl.SSLContext | None) -> int:
    host, port = split_address(address)
    try:
        return server.listen_tcp(host, port, ssl_context)
    except OSError as err:
        raise ServerConfigError(f"cannot listen on {address}: {err}") from err


class ObserverServer:
    def __init__(self, service: ObserverService, config: ServerConfig) -> None:
        if config.unix_socket is None and config.tcp_address is None:
            raise ServerConfigError("nothing to listen on: give a Unix socket path or a TCP address")
        if config.tcp_address and config.tls is None and not config.allow_insecure_tcp:
            raise ServerConfigError("TCP without TLS needs allow_insecure_tcp=True")
        self._config = config
        if config.tcp_address is not None:
            split_address(config.tcp_address)  # a malformed address fails here, before anything starts
        # Built in both modes: bad TLS material fails here, in the caller (the front process builds its own).
        self._ssl = config.tls.context() if config.tls is not None else None
        self._server: H2GrpcServer | None = None
        self._front: FrontLink | None = None
        if config.front_process:
            self._front = FrontLink(service, config)
        else:
            self._server = H2GrpcServer(methods(service), max_streams=config.max_workers)
        self.tcp_port: int | None = None

    @property
    def front(self) -> FrontLink | None:
        """The front process's link, when flows are served from one."""
        return self._front

    def start(self) -> None:
        cfg = self._config
        if self._front is not None:
            self.tcp_port = self._front.start()
        else:
            assert self._server is not None
            self._server.start()
            try:
                if cfg.unix_socket is not None:
                    bind_unix(self._server, cfg.unix_socket)
                if cfg.tcp_address is not None:
                    self.tcp_port = bind_tcp(self._server, cfg.tcp_address, self._ssl)
            except Exception:
                self._server.stop(grace=None)
                raise
        where = [str(cfg.unix_socket)] if cfg.unix_socket else []
        if self.tcp_port:
            where.append(f"tcp:{self.tcp_port}" + (" (TLS)" if cfg.tls else " (plaintext)"))
        how = " (front process)" if self._front is not None else ""
        logger.info("observer listening on %s%s", ", ".join(where), how)

    def stop(self, grace: float | None = 1.0) -> None:
        if self._front is not None:
            self._front.stop(grace)
        else:
            assert self._server is not None
            self._server.stop(grace)
        sock = self._config.unix_socket
        if sock is not None and sock.exists():
            sock.unlink()
