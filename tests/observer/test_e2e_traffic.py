"""Real packets between pods in network namespaces, through the real datapath, become flows on the API.

The chain under test: tc programs -> ring buffer -> Datapath.start_events -> FlowPipeline (enrichment,
ring, metrics) -> Observer gRPC server on a Unix socket -> a following client and `meshagent flows`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest
from meshagent.cli.main import main
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.events import EventReader
from meshagent.model.kernel_state import (
    Action,
    Direction,
    EndpointEntry,
    IPCacheEntry,
    KernelState,
    PolicyEntry,
    Protocol,
)
from meshagent.observer.client import ObserverClient
from meshagent.observer.convert import FlowBuilder
from meshagent.observer.enrich import EndpointInfo, PolicyRef, StaticEnricher, WorkloadRef
from meshagent.observer.metrics import FlowMetrics
from meshagent.observer.pipeline import FlowPipeline
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.ring import FlowRing
from meshagent.observer.server import ObserverServer, ServerConfig
from meshagent.observer.service import ObserverService
from meshagent.testing.topology import Pod, Topology
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import wait_until

pytestmark = pytest.mark.kernel

FOLLOW_LATENCY_S = 1.0  # from the packet to the following client, including the 10 ms reader period
ID_A, ID_B = 1010, 1020
RULE_ALLOW_A = 10


class Agent:
    def __init__(
        self,
        datapath: Datapath,
        pipeline: FlowPipeline,
        metrics: FlowMetrics,
        sock: Path,
        reader: EventReader,
    ) -> None:
        self.reader = reader
        self.datapath = datapath
        self.pipeline = pipeline
        self.metrics = metrics
        self.sock = sock


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, Pod, Pod]]:
    tmp = tmp_path_factory.mktemp("e2e")
    with Topology() as topo:
        a = topo.add_pod("a", "10.244.7.10", ipv6="fd00:7::10")
        b = topo.add_pod("b", "10.244.7.20", ipv6="fd00:7::20")
        b.serve(tcp=(80, 81), udp=(53,))
        dp = Datapath(
            pin_dir=Path("/sys/fs/bpf") / f"meshagent-obs-test-{uuid.uuid4().hex[:8]}", netns=topo.node
        )
        dp.load()
        try:
            dp.apply(
                KernelState(
                    endpoints=frozenset(
                        {
                            EndpointEntry(
                                ifindex=a.ifindex, endpoint_id=1, identity=ID_A, ipv4=a.ip, ipv6=a.ipv6
                            ),
                            EndpointEntry(
                                ifindex=b.ifindex,
                                endpoint_id=2,
                                identity=ID_B,
                                ipv4=b.ip,
                                ipv6=b.ipv6,
                                enforce_ingress=True,
                            ),
                        }
                    ),
                    ipcache=frozenset(
                        {
                            IPCacheEntry(IPv4Network(f"{a.ip}/32"), ID_A),
                            IPCacheEntry(IPv4Network(f"{b.ip}/32"), ID_B),
                            IPCacheEntry(IPv6Network(f"{a.ipv6}/128"), ID_A),
                            IPCacheEntry(IPv6Network(f"{b.ipv6}/128"), ID_B),
                        }
                    ),
                    policy=frozenset(
                        {
                            PolicyEntry(
                                endpoint_id=2,
                                direction=Direction.INGRESS,
                                peer_identity=ID_A,
                                protocol=Protocol.TCP,
                                port_lo=80,
                                port_hi=80,
                                action=Action.ALLOW,
                                rule_id=RULE_ALLOW_A,
                            ),
                        }
                    ),
                )
            )
            info_a = EndpointInfo(
                ID_A, "demo", "client-a", ("k8s:app=client",), (WorkloadRef("client", "Deployment"),)
            )
            info_b = EndpointInfo(
                ID_B, "demo", "server-b", ("k8s:app=server",), (WorkloadRef("server", "Deployment"),)
            )
            assert a.ipv6 is not None and b.ipv6 is not None
            enricher = StaticEnricher.from_mappings(
                endpoints={a.ip: info_a, b.ip: info_b, a.ipv6: info_a, b.ipv6: info_b},
                rules={RULE_ALLOW_A: (PolicyRef("NetworkPolicy", "demo", "allow-client"),)},
            )
            pipeline = FlowPipeline(
                builder=FlowBuilder(enricher=enricher, node_name="e2e-node"),
                ring=FlowRing(8192),
                kernel_lost=dp.lost_events,
            )
            metrics = FlowMetrics(
                node_name="e2e-node",
                version="test",
                map_usage=lambda: [],
            )
            pipeline.add_batch_sink(metrics.observe_prepared)  # as the agent wires it
            pipeline.add_lost_listener(metrics.lost)
            since = time.monotonic_ns()
            # Skip events older than this module (the ring buffer may hold another test's leftovers).
            reader = dp.start_events(
                on_events=lambda evs: pipeline.on_events([e for e in evs if e.timestamp_ns >= since])
            )
            server = ObserverServer(
                ObserverService(pipeline), ServerConfig(unix_socket=tmp / "observer.sock")
            )
            server.start()
            try:
                yield Agent(dp, pipeline, metrics, tmp / "observer.sock", reader), a, b
            finally:
                server.stop(grace=None)
                dp.stop_events()
        finally:
            dp.apply(KernelState())
            dp.uninstall()


def wait_flows(agent: Agent, flt: pb.FlowFilter, count: int = 1, timeout: float = 5.0) -> list[pb.Flow]:
    flows: list[pb.Flow] = []

    def enough() -> bool:
        with ObserverClient(f"unix://{agent.sock}") as c:
            flows[:] = [
                r.flow for r in c.get_flows(opb.GetFlowsRequest(whitelist=[flt])) if r.HasField("flow")
            ]
        return len(flows) >= count

    wait_until(enough, timeout, interval=0.05)
    return flows


def test_allowed_connection_becomes_a_forwarded_flow_with_policy(world: tuple[Agent, Pod, Pod]) -> None:
    agent, a, b = world
    result = a.probe("tcp", b.ip, 80)
    assert result["ok"], result
    flows = wait_flows(
        agent,
        pb.FlowFilter(source_pod=["demo/client-a"], destination_port=["80"], traffic_direction=[pb.INGRESS]),
    )
    assert flows, "no flow for the allowed connection"
    f = flows[0]
    assert f.verdict == pb.FORWARDED
    assert (f.IP.source, f.IP.destination) == (str(a.ip), str(b.ip))
    assert f.l4.TCP.source_port == result["sport"] and f.l4.TCP.flags.SYN
    assert (f.source.pod_name, f.source.namespace, f.source.identity) == ("client-a", "demo", ID_A)
    assert (f.destination.pod_name, f.destination.identity, f.destination.ID) == ("server-b", ID_B, 2)
    assert [w.name for w in f.destination.workloads] == ["server"]
    assert [(p.kind, p.namespace, p.name) for p in f.ingress_allowed_by] == [
        ("NetworkPolicy", "demo", "allow-client")
    ]
    assert f.event_type.type == 5 and f.trace_observation_point == pb.TO_ENDPOINT
    assert f.node_name == "e2e-node" and f.interface.index == b.ifindex
    assert abs(f.time.ToNanoseconds() - time.time_ns()) < 30 * 1_000_000_000  # wall clock, not monotonic
    assert f.is_reply.value is False


def test_ipv6_connections_become_ipv6_flows_found_by_ipv6_cidrs(
    world: tuple[Agent, Pod, Pod], capsys: pytest.CaptureFixture[str]
) -> None:
    agent, a, b = world
    assert b.ipv6 is not None
    allowed = a.probe("tcp", b.ipv6, 80)
    assert allowed["ok"], allowed
    assert not a.probe("tcp", b.ipv6, 81, timeout=0.5)["ok"]
    assert not a.probe("tcp", b.ip, 81, timeout=0.5)["ok"]
    to_b6 = pb.FlowFilter(destination_ip=["fd00:7::/64"], traffic_direction=[pb.INGRESS])
    flows = wait_flows(agent, to_b6, count=2)
    assert flows and all(f.IP.ipVersion == pb.IPv6 for f in flows)
    by_port = {f.l4.TCP.destination_port: f for f in flows}
    forwarded, dropped = by_port[80], by_port[81]
    assert (forwarded.IP.source, forwarded.IP.destination) == (str(a.ipv6), str(b.ipv6))
    assert forwarded.verdict == pb.FORWARDED and forwarded.l4.TCP.source_port == allowed["sport"]
    assert (forwarded.source.pod_name, forwarded.destination.pod_name) == ("client-a", "server-b")
    assert [p.name for p in forwarded.ingress_allowed_by] == ["allow-client"]
    assert dropped.verdict == pb.DROPPED and dropped.drop_reason_desc == pb.POLICY_DENIED
    # An IPv4 CIDR finds none of them; an IPv6 one of another network neither.
    v4 = wait_flows(agent, pb.FlowFilter(destination_ip=["10.244.7.0/24"], destination_port=["81"]))
    assert v4 and all(f.IP.ipVersion == pb.IPv4 for f in v4)
    assert not wait_flows(agent, pb.FlowFilter(destination_ip=["fd00:8::/64"]), count=0)
    # The CLI's compact line names the pods (enriched by their IPv6 addresses).
    capsys.readouterr()
    rc = main(
        ["flows", "--server", str(agent.sock), "--to-ip", "fd00:7::/64", "--to-port", "81", "--last", "1"]
    )
    assert rc == 0
    line = capsys.readouterr().out
    assert "demo/client-a" in line and "demo/server-b:81" in line and "DROPPED" in line, line


def test_events_are_read_through_the_ring_buffer_mapping(world: tuple[Agent, Pod, Pod]) -> None:
    agent, a, b = world
    assert agent.reader.mapped  # not BCC's per-record callback
    before = agent.reader.delivered
    assert not a.probe("tcp", b.ip, 81, timeout=0.5)["ok"]  # denied at b: at least a verdict and a drop
    assert wait_until(lambda: agent.reader.delivered >= before + 2)
    assert (agent.reader.decode_errors, agent.reader.malformed) == (0, 0)


def test_denied_connection_becomes_a_dropped_flow(world: tuple[Agent, Pod, Pod]) -> None:
    agent, a, b = world
    assert not a.probe("tcp", b.ip, 81, timeout=0.5)["ok"]
    flows = wait_flows(
        agent, pb.FlowFilter(destination_pod=["demo/server-b"], destination_port=["81"], verdict=[pb.DROPPED])
    )
    assert flows, "no flow for the denied connection"
    f = flows[0]
    assert f.drop_reason_desc == pb.POLICY_DENIED  # isolated endpoint, no rule allowed it
    assert f.traffic_direction == pb.INGRESS
    assert f.source.pod_name == "client-a"
    assert not f.ingress_allowed_by


def test_follower_sees_real_traffic_quickly(world: tuple[Agent, Pod, Pod]) -> None:
    agent, a, b = world
    seen: list[float] = []
    with ObserverClient(f"unix://{agent.sock}") as c:
        req = opb.GetFlowsRequest(
            follow=True, whitelist=[pb.FlowFilter(protocol=["udp"], destination_port=["53"])]
        )
        stream = c.get_flows(req, follow_timeout_s=15)

        def read() -> None:
            for r in stream:
                if r.HasField("flow"):
                    seen.append(time.monotonic())
                    return

        t = threading.Thread(target=read)
        t.start()
        # The server has read everything held and waits for new flows: the probe's flow arrives live.
        assert wait_until(lambda: agent.pipeline.ring.waiting >= 1, timeout=10)
        sent = time.monotonic()
        assert a.probe("udp", b.ip, 53)["ok"] is False  # UDP 53 is not allowed: dropped, still a flow
        t.join(timeout=10)
    assert seen, "the follower saw no flow"
    # The probe itself waits for its timeout; the bound is from sending, so it is generous but stated.
    assert seen[0] - sent < FOLLOW_LATENCY_S + 1.0


def scrape(agent: Agent) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(agent.metrics.registry).decode()
    return {
        (smp.name, tuple(sorted(smp.labels.items()))): smp.value
        for fam in text_string_to_metric_families(text)
        for smp in fam.samples
    }


ALLOWED_AT_B = (
    "meshagent_policy_verdicts_total",
    (("action", "forwarded"), ("direction", "ingress"), ("match", "rule")),
)


def test_cli_and_metrics_match_the_traffic(
    world: tuple[Agent, Pod, Pod], capsys: pytest.CaptureFixture[str]
) -> None:
    agent, a, b = world
    to_80 = pb.FlowFilter(
        destination_port=["80"], traffic_direction=[pb.INGRESS], event_type=[pb.EventTypeFilter(type=5)]
    )
    held_before = len(wait_flows(agent, to_80, count=0))
    metrics_before = scrape(agent).get(ALLOWED_AT_B, 0.0)
    sports = []
    for _ in range(3):
        result = a.probe("tcp", b.ip, 80)
        assert result["ok"], result
        sports.append(result["sport"])
    flows = wait_flows(agent, to_80, count=held_before + 3)
    assert len(flows) == held_before + 3  # exactly one ingress policy verdict per connection
    assert [f.l4.TCP.source_port for f in flows[-3:]] == sports
    # The same through the CLI, with hubble-style flags.
    rc = main(
        [
            "flows",
            "--server",
            str(agent.sock),
            "--from-pod",
            "demo/client-a",
            "--to-port",
            "80",
            "--traffic-direction",
            "ingress",
            "--type",
            "policy-verdict",
            "--last",
            "3",
            "-o",
            "json",
        ]
    )
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["l4"]["TCP"]["sourcePort"] for x in lines] == sports
    assert all(x["verdict"] == "FORWARDED" for x in lines)
    # Metrics (parsed with prometheus_client's parser) moved by exactly the connections made.
    assert scrape(agent).get(ALLOWED_AT_B, 0.0) - metrics_before == 3
    assert agent.pipeline.check_kernel_lost() == 0  # nothing lost at this rate
