"""Shared builders for observer tests: datapath events, a populated pipeline, a served socket."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import IDENTITY_WORLD, Direction, Verdict
from meshagent.observer.convert import FlowBuilder
from meshagent.observer.enrich import EndpointInfo, PolicyRef, ServiceRef, StaticEnricher, WorkloadRef
from meshagent.observer.pipeline import FlowPipeline
from meshagent.observer.ring import FlowRing
from meshagent.observer.server import ObserverServer, ServerConfig
from meshagent.observer.service import ObserverService

CLIENT_IP = IPv4Address("10.0.1.10")
SERVER_IP = IPv4Address("10.0.2.20")
DB_IP = IPv4Address("10.0.3.30")
WORLD_IP = IPv4Address("203.0.113.7")
SVC_IP = IPv4Address("10.96.0.10")
CLIENT_ID, SERVER_ID, DB_ID = 1001, 1002, 1003
RULE_ALLOW_WEB = 7
RULE_DENY_DB = 9


def enricher() -> StaticEnricher:
    return StaticEnricher.from_mappings(
        endpoints={
            CLIENT_IP: EndpointInfo(
                CLIENT_ID,
                "shop",
                "client-7d9f",
                ("k8s:app=client", "k8s:tier=front"),
                (WorkloadRef("client", "Deployment"),),
            ),
            SERVER_IP: EndpointInfo(
                SERVER_ID,
                "shop",
                "server-5c4b",
                ("k8s:app=server", "k8s:tier=back"),
                (WorkloadRef("server", "Deployment"),),
            ),
            DB_IP: EndpointInfo(DB_ID, "data", "db-0", ("k8s:app=db",), (WorkloadRef("db", "StatefulSet"),)),
        },
        rules={
            RULE_ALLOW_WEB: (PolicyRef("NetworkPolicy", "shop", "allow-web"),),
            RULE_DENY_DB: (PolicyRef("AdminNetworkPolicy", "", "deny-db"),),
        },
        services={(SVC_IP, 80, 6): ServiceRef("shop", "web")},
    )


def event(
    *,
    type: EventType = EventType.POLICY_VERDICT,
    verdict: Verdict | None = Verdict.ALLOWED,
    drop: DropReason = DropReason.NONE,
    direction: Direction = Direction.EGRESS,
    saddr: IPv4Address = CLIENT_IP,
    daddr: IPv4Address = SERVER_IP,
    sport: int = 40000,
    dport: int = 80,
    protocol: int = 6,
    tcp_flags: int = 0x02,
    is_reply: bool = False,
    rule_id: int = 0,
    src_identity: int = CLIENT_ID,
    dst_identity: int = SERVER_ID,
    ts_ns: int | None = None,
) -> DatapathEvent:
    return DatapathEvent(
        timestamp_ns=time.monotonic_ns() if ts_ns is None else ts_ns,
        type=type,
        verdict=verdict,
        drop_reason=drop,
        direction=direction,
        endpoint_id=11,
        ifindex=1,
        saddr=saddr,
        daddr=daddr,
        sport=sport,
        dport=dport,
        protocol=protocol,
        tcp_flags=tcp_flags,
        is_reply=is_reply,
        rule_id=rule_id,
        src_identity=src_identity,
        dst_identity=dst_identity,
    )


def sample_events() -> list[DatapathEvent]:
    """A small, varied traffic mix; each event is 1 ms after the previous one."""
    t0 = time.monotonic_ns() - 1_000_000_000
    evs = [
        event(rule_id=RULE_ALLOW_WEB, dport=80),  # client -> server allowed (egress)
        event(direction=Direction.INGRESS, rule_id=RULE_ALLOW_WEB, dport=80),  # same at server ingress
        event(
            saddr=SERVER_IP,
            daddr=CLIENT_IP,
            sport=80,
            dport=40000,
            tcp_flags=0x12,
            is_reply=True,
            src_identity=SERVER_ID,
            dst_identity=CLIENT_ID,
            type=EventType.CONN_CLOSE,
            verdict=None,
        ),
        event(
            type=EventType.DROP,
            verdict=Verdict.DENIED,
            drop=DropReason.POLICY_DENIED,
            daddr=DB_IP,
            dst_identity=DB_ID,
            dport=5432,
            rule_id=RULE_DENY_DB,
        ),
        event(
            type=EventType.DROP,
            verdict=Verdict.DENIED,
            drop=DropReason.POLICY_DEFAULT_DENY,
            direction=Direction.INGRESS,
            saddr=WORLD_IP,
            src_identity=IDENTITY_WORLD,
            daddr=SERVER_IP,
            dport=22,
        ),
        event(verdict=Verdict.AUDITED, daddr=DB_IP, dst_identity=DB_ID, dport=5432, rule_id=RULE_DENY_DB),
        event(protocol=17, dport=53, daddr=SVC_IP, dst_identity=IDENTITY_WORLD, tcp_flags=0),
        event(daddr=SVC_IP, dport=80, dst_identity=IDENTITY_WORLD),
        event(protocol=1, sport=0, dport=0, tcp_flags=0, daddr=WORLD_IP, dst_identity=IDENTITY_WORLD),
        event(protocol=132, dport=3868, tcp_flags=0),
    ]
    return [e._replace(timestamp_ns=t0 + i * 1_000_000) for i, e in enumerate(evs)]


@dataclass
class Served:
    pipeline: FlowPipeline
    service: ObserverService
    server: ObserverServer
    socket: Path

    @property
    def target(self) -> str:
        return f"unix://{self.socket}"


def make_pipeline(
    capacity: int = 4096, node_name: str = "node-a", kernel_lost: Callable[[], int] | None = None
) -> FlowPipeline:
    return FlowPipeline(
        builder=FlowBuilder(enricher=enricher(), node_name=node_name),
        ring=FlowRing(capacity),
        kernel_lost=kernel_lost,
    )


@contextmanager
def serve(pipeline: FlowPipeline, sock: Path, **cfg: object) -> Iterator[Served]:
    service = ObserverService(pipeline)
    server = ObserverServer(service, ServerConfig(unix_socket=sock, **cfg))  # type: ignore[arg-type]
    server.start()
    try:
        yield Served(pipeline, service, server, sock)
    finally:
        server.stop(grace=None)
