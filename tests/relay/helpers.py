"""Two nodes' flow APIs (real servers on Unix sockets, fed with sample flows) and the relay before them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from meshagent.model.events import DatapathEvent
from meshagent.observer.pipeline import FlowPipeline
from meshagent.relay.peers import ChannelSettings, PeerSpec
from meshagent.relay.server import RelayConfig, RelayServer
from meshagent.relay.service import Backoff, RelaySettings

from tests.observer import helpers as h

# Node b's flows come 0.5 ms after node a's of the same rank: merged by time they alternate a, b, a, ...
NODE_B_OFFSET_NS = 500_000


def node_events(node: str, base: list[DatapathEvent] | None = None) -> list[DatapathEvent]:
    """The sample traffic as this node saw it: node-b's shifted from the same base as node-a's."""
    events = base if base is not None else h.sample_events()
    if node == "node-b":
        events = [e._replace(timestamp_ns=e.timestamp_ns + NODE_B_OFFSET_NS) for e in events]
    return events


@dataclass
class Relayed:
    nodes: dict[str, h.Served]
    relay: RelayServer
    socket: Path

    @property
    def target(self) -> str:
        return f"unix://{self.socket}"

    def pipeline(self, node: str) -> FlowPipeline:
        return self.nodes[node].pipeline


@contextmanager
def serve_node(directory: Path, node: str, base: list[DatapathEvent] | None = None) -> Iterator[h.Served]:
    pipeline = h.make_pipeline(node_name=node)
    pipeline.on_events(node_events(node, base))
    with h.serve(pipeline, directory / f"{node}.sock") as served:
        yield served


def fast_settings() -> RelaySettings:
    return RelaySettings(drain_s=0.2, backoff=Backoff(initial_s=0.1, max_s=0.5))


@contextmanager
def relay_for(
    directory: Path, peers: list[PeerSpec], *, settings: RelaySettings | None = None
) -> Iterator[tuple[RelayServer, Path]]:
    sock = directory / "relay.sock"
    server = RelayServer(
        RelayConfig(
            peers=tuple(peers),
            unix_socket=sock,
            channel=ChannelSettings(timeout_s=3.0, reconnect_min_s=0.1, reconnect_max_s=0.5),
            relay=settings or fast_settings(),
        )
    )
    server.start()
    try:
        yield server, sock
    finally:
        server.stop(grace=None)


@contextmanager
def relayed(directory: Path, names: tuple[str, ...] = ("node-a", "node-b")) -> Iterator[Relayed]:
    with ExitStack() as stack:
        base = h.sample_events()
        nodes = {name: stack.enter_context(serve_node(directory, name, base)) for name in names}
        peers = [PeerSpec(target=served.target, name=name) for name, served in nodes.items()]
        relay, sock = stack.enter_context(relay_for(directory, peers))
        yield Relayed(nodes, relay, sock)
