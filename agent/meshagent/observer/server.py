"""Runs the Observer service: a Unix socket (owner-only) by default, optionally TCP with TLS (port 4245)."""

from __future__ import annotations

import logging
import os
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshagent.observer.service import ObserverService, generic_handler

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

    def credentials(self) -> grpc.ServerCredentials:
        try:
            cert = self.cert_file.read_bytes()
            key = self.key_file.read_bytes()
            ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        except OSError as err:
            raise ServerConfigError(f"cannot read TLS material: {err}") from err
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )


@dataclass(frozen=True)
class ServerConfig:
    unix_socket: Path | None = DEFAULT_SOCKET
    tcp_address: str | None = None  # e.g. "0.0.0.0:4245"
    tls: TlsConfig | None = None
    allow_insecure_tcp: bool = False  # plaintext TCP only when asked for explicitly
    max_workers: int = 16  # each following client holds one worker


class ObserverServer:
    def __init__(self, service: ObserverService, config: ServerConfig) -> None:
        if config.unix_socket is None and config.tcp_address is None:
            raise ServerConfigError("nothing to listen on: give a Unix socket path or a TCP address")
        if config.tcp_address and config.tls is None and not config.allow_insecure_tcp:
            raise ServerConfigError("TCP without TLS needs allow_insecure_tcp=True")
        self._config = config
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="observer"),
            handlers=[generic_handler(service)],
            # Each follower holds a worker: beyond that, refuse (RESOURCE_EXHAUSTED) rather than queue.
            maximum_concurrent_rpcs=config.max_workers,
        )
        self.tcp_port: int | None = None

    def start(self) -> None:
        cfg = self._config
        # umask makes the Unix socket owner-only from the moment it exists, whether gRPC binds it when the
        # port is added or at start(); the chmod afterwards is belt and braces.
        old = os.umask(0o177)
        try:
            self._add_ports()
            self._server.start()
        finally:
            os.umask(old)
        if cfg.unix_socket is not None:
            os.chmod(cfg.unix_socket, 0o600)
        where = [str(cfg.unix_socket)] if cfg.unix_socket else []
        if self.tcp_port:
            where.append(f"tcp:{self.tcp_port}" + (" (TLS)" if cfg.tls else " (plaintext)"))
        logger.info("observer listening on %s", ", ".join(where))

    def _add_ports(self) -> None:
        cfg = self._config
        if cfg.unix_socket is not None:
            self._bind_unix(cfg.unix_socket)
        if cfg.tcp_address is not None:
            try:
                if cfg.tls is not None:
                    port = self._server.add_secure_port(cfg.tcp_address, cfg.tls.credentials())
                else:
                    port = self._server.add_insecure_port(cfg.tcp_address)
            except RuntimeError as err:  # grpc raises rather than returning 0 on a failed bind
                raise ServerConfigError(f"cannot listen on {cfg.tcp_address}: {err}") from err
            if port == 0:
                raise ServerConfigError(f"cannot listen on {cfg.tcp_address}")
            self.tcp_port = port

    def _bind_unix(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            path.unlink()  # stale socket from a previous run
        try:
            port = self._server.add_insecure_port(f"unix:{path}")
        except RuntimeError as err:
            raise ServerConfigError(f"cannot listen on unix:{path}: {err}") from err
        if port == 0:
            raise ServerConfigError(f"cannot listen on unix:{path}")

    def stop(self, grace: float | None = 1.0) -> None:
        self._server.stop(grace).wait()
        sock = self._config.unix_socket
        if sock is not None and sock.exists():
            sock.unlink()
