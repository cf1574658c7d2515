"""Service translation with real sockets: processes in the test cgroup, in a pod's network namespace,
connect to a ClusterIP that exists nowhere (inside the pods and the node it is unreachable) and reach a
backend pod; the application sees only the Service address."""

from __future__ import annotations

import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from meshagent.datapath.socklb import SocketLB
from meshagent.model.kernel_state import Protocol
from meshagent.model.services import Frontend, LBBackend, LBEntry, ServiceTranslation
from meshagent.testing.topology import Topology

from tests.socklb.helpers import accepted, run_client

pytestmark = pytest.mark.kernel

VIP = IPv4Address("10.96.0.10")
CLIENT_IP = "10.244.2.10"
BACKEND_IPS = ("10.244.2.20", "10.244.2.30")


def entry(port: int, protocol: Protocol, *backends: tuple[str, int, int], affinity: int = 0) -> LBEntry:
    return LBEntry(
        frontend=Frontend(VIP, port, protocol),
        backends=tuple(LBBackend(IPv4Address(ip), p, w) for ip, p, w in backends),
        affinity_timeout=affinity,
    )


def apply(lb: SocketLB, *entries: LBEntry) -> None:
    result = lb.apply({e.frontend: e for e in entries})
    assert not result.errors


def test_tcp_to_cluster_ip_reaches_backend_and_peer_is_the_service(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = lb_topo.add_pod("client", CLIENT_IP)
    backend = lb_topo.add_pod("b1", BACKEND_IPS[0])
    backend.serve(tcp=(8080,), log=tmp_path / "b1.log")
    apply(socklb, entry(80, Protocol.TCP, (BACKEND_IPS[0], 8080, 1)))

    result = run_client(client, "tcp", str(VIP), "80", "--count", "5", cgroup=lb_cgroup)

    assert result["ok"] == 5, result
    assert result["peers"] == [f"{VIP}:80"]  # getpeername shows the Service, not 10.244.2.20:8080
    assert accepted(tmp_path / "b1.log", client) == 5  # the backend saw the client's real address


def test_udp_connected_and_unconnected_through_the_vip(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = lb_topo.add_pod("client", CLIENT_IP)
    backend = lb_topo.add_pod("b1", BACKEND_IPS[0])
    backend.serve(udp=(5353,), log=tmp_path / "b1.log")
    apply(socklb, entry(53, Protocol.UDP, (BACKEND_IPS[0], 5353, 1)))

    connected = run_client(client, "udp", str(VIP), "53", "--count", "3", cgroup=lb_cgroup)
    unconnected = run_client(client, "udp-unconnected", str(VIP), "53", "--count", "3", cgroup=lb_cgroup)

    assert connected["ok"] == 3, connected
    assert connected["peers"] == [f"{VIP}:53"]
    assert unconnected["ok"] == 3, unconnected
    assert unconnected["sources"] == [f"{VIP}:53"]  # recvfrom shows the Service as the reply's source
    assert accepted(tmp_path / "b1.log", client) == 6


def test_a_tcp_service_port_does_not_translate_udp(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = lb_topo.add_pod("client", CLIENT_IP)
    backend = lb_topo.add_pod("b1", BACKEND_IPS[0])
    backend.serve(udp=(80,), log=tmp_path / "b1.log")
    apply(socklb, entry(80, Protocol.TCP, (BACKEND_IPS[0], 80, 1)))

    result = run_client(client, "udp", str(VIP), "80", "--timeout", "0.3", cgroup=lb_cgroup)

    assert result["ok"] == 0
    assert accepted(tmp_path / "b1.log", client) == 0


def test_no_backend_is_refused_at_once(lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path) -> None:
    client = lb_topo.add_pod("client", CLIENT_IP)
    apply(socklb, entry(80, Protocol.TCP), entry(53, Protocol.UDP))

    tcp = run_client(client, "tcp", str(VIP), "80", "--count", "3", "--timeout", "5", cgroup=lb_cgroup)
    udp = run_client(client, "udp", str(VIP), "53", "--timeout", "5", cgroup=lb_cgroup)
    unconnected = run_client(client, "udp-unconnected", str(VIP), "53", "--timeout", "5", cgroup=lb_cgroup)

    assert tcp["errors"] == {"ECONNREFUSED": 3}, tcp
    assert udp["errors"] == {"ECONNREFUSED": 1}, udp
    assert unconnected["errors"] == {"ECONNREFUSED": 1}, unconnected
    # Refused by the connect() call itself, not after a timeout (which would be 5 s).
    assert max(tcp["slowest_ms"], udp["slowest_ms"], unconnected["slowest_ms"]) < 100


def test_a_process_outside_the_cgroup_is_untouched(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = lb_topo.add_pod("client", CLIENT_IP)
    backend = lb_topo.add_pod("b1", BACKEND_IPS[0])
    backend.serve(tcp=(80,), log=tmp_path / "b1.log")
    apply(socklb, entry(80, Protocol.TCP, (BACKEND_IPS[0], 80, 1)))

    outside = run_client(client, "tcp", str(VIP), "80", "--timeout", "2", cgroup=None)
    inside = run_client(client, "tcp", str(VIP), "80", cgroup=lb_cgroup)

    # The VIP is routed nowhere: the node's `unreachable default` answers the untranslated connection.
    assert outside["errors"] == {"EHOSTUNREACH": 1}, outside
    assert inside["ok"] == 1
    assert accepted(tmp_path / "b1.log", client) == 1


def test_every_translation_and_refusal_is_reported(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = lb_topo.add_pod("client", CLIENT_IP)
    backend = lb_topo.add_pod("b1", BACKEND_IPS[0])
    backend.serve(tcp=(8080,))
    apply(socklb, entry(80, Protocol.TCP, (BACKEND_IPS[0], 8080, 1)), entry(81, Protocol.TCP))
    since = time.monotonic_ns()  # earlier tests' records may still be in the ring buffer
    seen: list[ServiceTranslation] = []
    socklb.start_events(seen.append, thread=False)
    try:
        assert run_client(client, "tcp", str(VIP), "80", "--count", "2", cgroup=lb_cgroup)["ok"] == 2
        assert run_client(client, "tcp", str(VIP), "81", cgroup=lb_cgroup)["errors"] == {"ECONNREFUSED": 1}
        socklb.poll_events()
    finally:
        socklb.stop_events()

    ours = [event for event in seen if event.timestamp_ns >= since]
    assert [(e.frontend, e.backend) for e in ours] == [
        (Frontend(VIP, 80, Protocol.TCP), (IPv4Address(BACKEND_IPS[0]), 8080)),
        (Frontend(VIP, 80, Protocol.TCP), (IPv4Address(BACKEND_IPS[0]), 8080)),
        (Frontend(VIP, 81, Protocol.TCP), None),
    ]
    assert len({e.socket_cookie for e in ours}) == 3  # three sockets
    assert len({e.netns_cookie for e in ours}) == 1  # one client pod
    assert socklb.lost_events() == 0
