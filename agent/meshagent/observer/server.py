"""Runs the Observer service: a Unix socket (owner-only) by default, optionally TCP with TLS (port 4245).

In this process (H2GrpcServer on a thread), or with `front_process=True` in a process of its own that
speaks gRPC and encodes flows while this one keeps the ring and answers queries (frontlink.py): the agent's
choice, where ingest and serving would otherwise share one interpreter lock.
"""

from __future__ import annotations

import contextlib
import logging
import stat

from meshagent.observer.frontlink import FrontLink
from meshagent.observer.h2server import H2GrpcServer
from meshagent.observer.listen import (
    DEFAULT_SOCKET,
    DEFAULT_TCP_PORT,
    ServerConfig,
    ServerConfigError,
    TlsConfig,
    bind_tcp,
    bind_unix,
    group_id,
    split_address,
)
from meshagent.observer.service import ObserverService, methods

# Where listening is configured (observer/listen.py), for the callers that start a server from here.
__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TCP_PORT",
    "ObserverServer",
    "ServerConfig",
    "ServerConfigError",
    "TlsConfig",
    "bind_tcp",
    "bind_unix",
    "group_id",
    "split_address",
]

logger = logging.getLogger(__name__)

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
            self._server = H2GrpcServer(methods(service), limits=config.limits)
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
                    bind_unix(self._server, cfg.unix_socket, cfg.socket_group)
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
        with contextlib.suppress(OSError):
            if sock is not None and stat.S_ISSOCK(sock.lstat().st_mode):
                sock.unlink()
