"""Finding the agents: a thread that asks a lister (the Kubernetes API, in the CLI) every few seconds for
the agents' nodes and addresses and makes the relay's peers those. A failed refresh keeps the peers the
relay has, so an API server outage never empties the relay."""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence

from meshagent.relay.peers import PeerPool, PeerSpec

logger = logging.getLogger(__name__)

Lister = Callable[[], Sequence[tuple[str, str]]]  # -> [(node name, address)]


def peer_specs(found: Sequence[tuple[str, str]], port: int) -> list[PeerSpec]:
    specs = []
    for node, address in sorted(set(found)):
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        specs.append(PeerSpec(target=f"{host}:{port}", name=node))
    return specs


class Discovery:
    def __init__(self, pool: PeerPool, lister: Lister, *, port: int, interval_s: float = 10.0) -> None:
        self.pool = pool
        self.lister = lister
        self.port = port
        self.interval_s = interval_s
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay-discovery", daemon=True)

    def refresh(self) -> bool:
        """One refresh; returns whether it worked (the peers are then what the lister said)."""
        try:
            specs = peer_specs(self.lister(), self.port)
        except Exception as err:  # kept going: the relay keeps the peers it has
            self.last_error = f"{type(err).__name__}: {err}"
            logger.warning(
                "relay: cannot list the agents (%s); keeping %d peer(s)",
                self.last_error,
                len(self.pool.peers),
            )
            return False
        self.last_error = None
        if self.pool.update(specs):
            logger.info("relay: following %d agent(s): %s", len(specs), ", ".join(s.name for s in specs))
        return True

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
