"""Prometheus families for node-to-node encryption, read at scrape time: per remote node, the packets,
bytes and new connections that crossed encrypted or in plaintext (the numbers to decide on strict mode
by), and each WireGuard peer's last handshake and byte counters."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meshagent.agent.encryption import Encryption

logger = logging.getLogger(__name__)

_LABELS = ["peer_node", "direction", "encrypted"]


class EncryptionCollector(Collector):
    def __init__(self, encryption: Encryption) -> None:
        self._encryption = encryption

    def collect(self) -> Iterable[Any]:
        enc = self._encryption
        families = {
            field: CounterMetricFamily(f"meshagent_encryption_{field}", help_text, labels=_LABELS)
            for field, help_text in (
                ("packets", "Pod packets to (egress) or from (ingress) a remote node, encrypted or not"),
                ("bytes", "Pod bytes to (egress) or from (ingress) a remote node, encrypted or not"),
                (
                    "flows",
                    "New pod connections to (egress) or from (ingress) a remote node, encrypted or not",
                ),
            )
        }
        mode = GaugeMetricFamily("meshagent_encryption_mode", "1 for the mode in force", labels=["mode"])
        status = enc.status()
        for name in ("off", "permissive", "strict"):
            mode.add_metric([name], 1.0 if status["mode"] == name else 0.0)
        yield mode
        if enc.maps is not None:
            names = enc.node_names()
            try:
                counters = enc.maps.counters()
            except Exception:  # a failing map read must not break the whole scrape
                logger.exception("reading encryption counters failed")
                counters = []
            for c in sorted(counters, key=lambda c: (c.node_id, c.direction, c.encrypted)):
                labels = [
                    names.get(c.node_id, f"id-{c.node_id}"),
                    c.direction.name.lower(),
                    str(c.encrypted).lower(),
                ]
                families["packets"].add_metric(labels, c.packets)
                families["bytes"].add_metric(labels, c.bytes)
                families["flows"].add_metric(labels, c.flows)
        yield from families.values()
        handshake = GaugeMetricFamily(
            "meshagent_wireguard_peer_last_handshake_seconds",
            "Time of the last handshake with the peer (seconds since the epoch, 0: never)",
            labels=["peer_node"],
        )
        rx = CounterMetricFamily(
            "meshagent_wireguard_peer_rx_bytes", "Bytes received from the peer", labels=["peer_node"]
        )
        tx = CounterMetricFamily(
            "meshagent_wireguard_peer_tx_bytes", "Bytes sent to the peer", labels=["peer_node"]
        )
        for peer in status["peers"]:
            handshake.add_metric([peer["node"]], peer["last_handshake"])
            rx.add_metric([peer["node"]], peer["rx_bytes"])
            tx.add_metric([peer["node"]], peer["tx_bytes"])
        yield handshake
        yield rx
        yield tx
