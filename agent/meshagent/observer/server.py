"""Runs the Observer service: a Unix socket (owner-only) by default, optionally TCP with TLS (port 4245)."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

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


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ServerConfigError(f"TCP address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


class ObserverServer:
    def __init__(self, service: ObserverService, config: ServerConfig) -> None:
        if config.unix_socket is None and config.tcp_address is None:
            raise ServerConfigError("nothing to listen on: give a Unix socket path or a TCP address")
        if config.tcp_address and config.tls is None and not config.allow_insecure_tcp:
            raise ServerConfigError("TCP without TLS needs allow_insecure_tcp=True")
        self._config = config
        self._tcp = _split_address(config.tcp_address) if config.tcp_address is not None else None
        self._ssl = config.tls.context() if config.tls is not None else None
        self._server = H2GrpcServer(methods(service), max_streams=config.max_workers)
        self.tcp_port: int | None = None

    def start(self) -> None:
        cfg = self._config
        self._server.start()
        try:
            if cfg.unix_socket is not None:
                self._bind_unix(cfg.unix_socket)
            if self._tcp is not None:
                host, port = self._tcp
                try:
                    self.tcp_port = self._server.listen_tcp(host, port, self._ssl)
                except OSError as err:
                    raise ServerConfigError(f"cannot listen on {cfg.tcp_address}: {err}") from err
        except Exception:
            self._server.stop(grace=None)
            raise
        where = [str(cfg.unix_socket)] if cfg.unix_socket else []
        if self.tcp_port:
            where.append(f"tcp:{self.tcp_port}" + (" (TLS)" if cfg.tls else " (plaintext)"))
        logger.info("observer listening on %s", ", ".join(where))

    def _bind_unix(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            path.unlink()  # stale socket from a previous run
        try:
            self._server.listen_unix(path)
        except OSError as err:
            raise ServerConfigError(f"cannot listen on unix:{path}: {err}") from err

    def stop(self, grace: float | None = 1.0) -> None:
        self._server.stop(grace)
        sock = self._config.unix_socket
        if sock is not None and sock.exists():
            sock.unlink()
