"""The encryption metrics as Prometheus reads them (real registry, real text format, real parser): per
remote node and direction, encrypted and plaintext packets, bytes and connections; the mode; the peers."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshagent.agent.encryption_metrics import EncryptionCollector
from meshagent.datapath.encryption_maps import PairCounters
from meshagent.datapath.maps.wireguard import node_id
from meshagent.model.kernel_state import Direction
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.wireguard.rig import Rig


@dataclass
class CountingMaps:
    pairs: list[PairCounters] = field(default_factory=list)

    def counters(self) -> list[PairCounters]:
        return self.pairs


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_per_node_pair_counters_mode_and_peers(rig: Rig) -> None:
    rig.encryption._step()
    counting = CountingMaps(
        [
            PairCounters(node_id("node-2"), Direction.INGRESS, True, packets=10, bytes=1500, flows=2),
            PairCounters(node_id("node-3"), Direction.EGRESS, False, packets=4, bytes=240, flows=1),
        ]
    )
    rig.maps.counters = counting.counters  # type: ignore[attr-defined]
    registry = CollectorRegistry()
    registry.register(EncryptionCollector(rig.encryption))
    samples = scrape(registry)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    encrypted_in = dict(peer_node="node-2", direction="ingress", encrypted="true")
    assert value("meshagent_encryption_packets_total", **encrypted_in) == 10
    assert value("meshagent_encryption_bytes_total", **encrypted_in) == 1500
    assert value("meshagent_encryption_flows_total", **encrypted_in) == 2
    plain_out = dict(peer_node="node-3", direction="egress", encrypted="false")
    assert value("meshagent_encryption_flows_total", **plain_out) == 1
    assert value("meshagent_encryption_mode", mode="permissive") == 1
    assert value("meshagent_encryption_mode", mode="strict") == 0
    assert value("meshagent_wireguard_peer_last_handshake_seconds", peer_node="node-2") == 0
    assert value("meshagent_wireguard_peer_rx_bytes_total", peer_node="node-2") == 0
