"""Serves the relay: the project's own gRPC server (observer/h2server.py, with its limits) on a Unix
socket and/or TCP with the agent's TLS options, answering for every node (service.py)."""

from __future__ import annotations

import contextlib
import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path

from meshagent.observer.h2server import H2GrpcServer
from meshagent.observer.limits import DEFAULT_LIMITS, ServerLimits
from meshagent.observer.listen import ServerConfigError, TlsConfig, bind_tcp, bind_unix, split_address
from meshagent.relay.peers import ChannelSettings, PeerPool, PeerSpec
from meshagent.relay.service import RelayService, RelaySettings, methods

logger = logging.getLogger(__name__)

DEFAULT_RELAY_PORT = 4245  # Hubble relay's port (agents listen there too, but on other machines)


@dataclass(frozen=True)
class RelayConfig:
    peers: tuple[PeerSpec, ...]
    unix_socket: Path | None = None
    tcp_address: str | None = None
    tls: TlsConfig | None = None
    allow_insecure_tcp: bool = False
    socket_group: str | None = None
    limits: ServerLimits = field(default=DEFAULT_LIMITS)
    channel: ChannelSettings = field(default_factory=ChannelSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)

    def __post_init__(self) -> None:
        if self.unix_socket is None and self.tcp_address is None:
            raise ServerConfigError("nothing to listen on: give a Unix socket path or a TCP address")
        if self.tcp_address is not None:
            split_address(self.tcp_address)
            if self.tls is None and not self.allow_insecure_tcp:
                raise ServerConfigError("TCP without TLS needs --insecure (or give --tls-cert and --tls-key)")


class RelayServer:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self._ssl = config.tls.context() if config.tls is not None else None  # bad material fails here
        # With no peers given, discovery (discovery.py) fills the pool.
        self.pool = PeerPool(list(config.peers), config.channel, allow_empty=not config.peers)
        self.service = RelayService(self.pool, config.relay)
        self._server = H2GrpcServer(methods(self.service), limits=config.limits)
        self.tcp_port: int | None = None

    def start(self) -> None:
        cfg = self.config
        self._server.start()
        try:
            if cfg.unix_socket is not None:
                bind_unix(self._server, cfg.unix_socket, cfg.socket_group)
            if cfg.tcp_address is not None:
                self.tcp_port = bind_tcp(self._server, cfg.tcp_address, self._ssl)
        except Exception:
            self._server.stop(grace=None)
            self.pool.close()
            raise
        where = [str(cfg.unix_socket)] if cfg.unix_socket else []
        if self.tcp_port:
            where.append(f"tcp:{self.tcp_port}" + (" (TLS)" if cfg.tls else " (plaintext)"))
        logger.info(
            "relay listening on %s for %d node(s): %s",
            ", ".join(where),
            len(self.pool.peers),
            ", ".join(p.spec.target for p in self.pool.peers),
        )

    def stop(self, grace: float | None = 1.0) -> None:
        self._server.stop(grace)
        self.pool.close()
        sock = self.config.unix_socket
        with contextlib.suppress(OSError):
            if sock is not None and stat.S_ISSOCK(sock.lstat().st_mode):
                sock.unlink()
