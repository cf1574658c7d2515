"""IPv6 and dual-stack Service translation with real sockets: clients in the test cgroup, in a pod's
network namespace, reach IPv6 ClusterIPs that exist nowhere (the node's IPv6 default route is
`unreachable`, so an untranslated one never leaves it), IPv4 Services through v4-mapped addresses on an
IPv6 socket, and a dual-stack Service on both families; the application sees only the Service address."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from meshagent.datapath.socklb import LBCapacities, SocketLB
from meshagent.model.kernel_state import Protocol
from meshagent.model.services import Frontend, LBBackend, LBEntry, ServiceTranslation
from meshagent.services.catalog import ServiceCatalog
from meshagent.testing.topology import Pod, Topology

from tests.socklb.helpers import accepted, endpoint_slice, run_client, service

pytestmark = pytest.mark.kernel

VIP6 = IPv6Address("fd00:96::10")
VIP4 = IPv4Address("10.96.0.60")
CLIENT = ("10.244.6.10", "fd00:244::6:10")
BACKENDS = (("10.244.6.20", "fd00:244::6:20"), ("10.244.6.30", "fd00:244::6:30"))


def entry6(port: int, protocol: Protocol, *backends: tuple[str, int, int], affinity: int = 0) -> LBEntry:
    return LBEntry(
        frontend=Frontend(VIP6, port, protocol),
        backends=tuple(LBBackend(IPv6Address(ip), p, w) for ip, p, w in backends),
        affinity_timeout=affinity,
    )


def apply(lb: SocketLB, *entries: LBEntry) -> None:
    result = lb.apply({e.frontend: e for e in entries})
    assert not result.errors


def dual_stack_pods(
    topo: Topology, tmp_path: Path, *, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = ()
) -> Pod:
    """The client and two backends, each with an IPv4 and an IPv6 address; backends log to b1.log/b2.log."""
    client = topo.add_pod("client", CLIENT[0], ipv6=CLIENT[1])
    for index, (ip, ip6) in enumerate(BACKENDS, start=1):
        topo.add_pod(f"b{index}", ip, ipv6=ip6).serve(tcp=tcp, udp=udp, log=tmp_path / f"b{index}.log")
    return client


def test_tcp_to_an_ipv6_cluster_ip_reaches_a_backend_and_the_peer_is_the_service(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = dual_stack_pods(lb_topo, tmp_path, tcp=(8080,))
    apply(socklb, entry6(80, Protocol.TCP, (BACKENDS[0][1], 8080, 1)))

    result = run_client(client, "tcp", str(VIP6), "80", "--count", "5", cgroup=lb_cgroup)

    assert result["ok"] == 5, result
    assert result["peers"] == [f"[{VIP6}]:80"]  # getpeername shows the Service, not the backend
    assert accepted(tmp_path / "b1.log", client, ipv6=True) == 5  # the backend saw the client's address


def test_udp_connected_and_unconnected_through_an_ipv6_vip(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = dual_stack_pods(lb_topo, tmp_path, udp=(5353,))
    apply(socklb, entry6(53, Protocol.UDP, (BACKENDS[0][1], 5353, 1)))

    connected = run_client(client, "udp", str(VIP6), "53", "--count", "3", cgroup=lb_cgroup)
    unconnected = run_client(client, "udp-unconnected", str(VIP6), "53", "--count", "3", cgroup=lb_cgroup)

    assert connected["ok"] == 3, connected
    assert connected["peers"] == [f"[{VIP6}]:53"]
    assert unconnected["ok"] == 3, unconnected
    assert unconnected["sources"] == [f"[{VIP6}]:53"]  # recvfrom shows the Service as the reply's source
    assert accepted(tmp_path / "b1.log", client, ipv6=True) == 6


def test_ipv6_weights_and_affinity(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = dual_stack_pods(lb_topo, tmp_path, tcp=(8080,))
    both = ((BACKENDS[0][1], 8080, 1), (BACKENDS[1][1], 8080, 1))
    logs = (tmp_path / "b1.log", tmp_path / "b2.log")

    # A zero weight is never chosen.
    apply(socklb, entry6(80, Protocol.TCP, (BACKENDS[0][1], 8080, 0), (BACKENDS[1][1], 8080, 1)))
    assert run_client(client, "tcp", str(VIP6), "80", "--count", "20", cgroup=lb_cgroup)["ok"] == 20
    assert [accepted(log, client, ipv6=True) for log in logs] == [0, 20]

    # Equal weights spread: all 30 on one of two backends has odds 2**-29.
    apply(socklb, entry6(80, Protocol.TCP, *both))
    assert run_client(client, "tcp", str(VIP6), "80", "--count", "30", cgroup=lb_cgroup)["ok"] == 30
    spread = [accepted(log, client, ipv6=True) for log in logs]
    assert spread[0] > 0 and spread[1] > 20, spread

    # ClientIP affinity: every connection of the pod goes to the backend its first one got.
    apply(socklb, entry6(80, Protocol.TCP, *both, affinity=60))
    assert run_client(client, "tcp", str(VIP6), "80", "--count", "30", cgroup=lb_cgroup)["ok"] == 30
    added = sorted(
        accepted(log, client, ipv6=True) - before for log, before in zip(logs, spread, strict=True)
    )
    assert added == [0, 30], added


def test_an_ipv6_service_without_backends_is_refused_at_once(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path
) -> None:
    client = lb_topo.add_pod("client", CLIENT[0], ipv6=CLIENT[1])
    apply(socklb, entry6(80, Protocol.TCP), entry6(53, Protocol.UDP))

    tcp = run_client(client, "tcp", str(VIP6), "80", "--timeout", "5", cgroup=lb_cgroup)
    unconnected = run_client(client, "udp-unconnected", str(VIP6), "53", "--timeout", "5", cgroup=lb_cgroup)

    assert tcp["errors"] == {"ECONNREFUSED": 1}, tcp
    assert unconnected["errors"] == {"ECONNREFUSED": 1}, unconnected
    assert max(tcp["slowest_ms"], unconnected["slowest_ms"]) < 100  # not a 5 s timeout


def test_an_untranslated_ipv6_vip_hits_the_nodes_unreachable_route(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = dual_stack_pods(lb_topo, tmp_path, tcp=(80,))
    apply(socklb, entry6(80, Protocol.TCP, (BACKENDS[0][1], 80, 1)))

    outside = run_client(client, "tcp", str(VIP6), "80", "--timeout", "2", cgroup=None)
    other_port = run_client(client, "tcp", str(VIP6), "81", "--timeout", "2", cgroup=lb_cgroup)

    # Not a Service (a process outside the cgroup, a port the Service lacks): the packet goes to the
    # node, whose IPv6 default route is `unreachable`, and nowhere else.
    assert outside["ok"] == 0 and set(outside["errors"]) <= {"EHOSTUNREACH", "ENETUNREACH"}, outside
    assert other_port["ok"] == 0 and set(other_port["errors"]) <= {"EHOSTUNREACH", "ENETUNREACH"}, other_port
    assert accepted(tmp_path / "b1.log", client, ipv6=True) == 0


def test_an_ipv4_service_through_v4_mapped_addresses_on_an_ipv6_socket(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = dual_stack_pods(lb_topo, tmp_path, tcp=(8080,), udp=(5353,))
    backend = IPv4Address(BACKENDS[0][0])
    apply(
        socklb,
        LBEntry(Frontend(VIP4, 80, Protocol.TCP), (LBBackend(backend, 8080, 1),)),
        LBEntry(Frontend(VIP4, 53, Protocol.UDP), (LBBackend(backend, 5353, 1),)),
    )
    mapped = f"::ffff:{VIP4}"

    tcp = run_client(client, "tcp", mapped, "80", "--count", "3", cgroup=lb_cgroup)
    udp = run_client(client, "udp", mapped, "53", "--count", "2", cgroup=lb_cgroup)
    unconnected = run_client(client, "udp-unconnected", mapped, "53", "--count", "2", cgroup=lb_cgroup)

    assert tcp["ok"] == 3 and tcp["peers"] == [f"[{mapped}]:80"], tcp
    assert udp["ok"] == 2 and udp["peers"] == [f"[{mapped}]:53"], udp
    assert unconnected["ok"] == 2 and unconnected["sources"] == [f"[{mapped}]:53"], unconnected
    assert accepted(tmp_path / "b1.log", client) == 7  # plain IPv4 on the wire, from the client's IPv4


def dual_stack_service(name: str, port: dict[str, Any]) -> dict[str, Any]:
    obj = service(name, str(VIP4), [port], ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv4", "IPv6"])
    obj["spec"]["clusterIPs"] = [str(VIP4), str(VIP6)]
    return obj


def test_a_dual_stack_service_is_reached_on_both_families(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = dual_stack_pods(lb_topo, tmp_path, tcp=(8080,))
    slice_ports = [{"name": "http", "protocol": "TCP", "port": 8080}]
    ready = {"ready": True}
    catalog = ServiceCatalog()
    for obj in (
        dual_stack_service("web", {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}),
        endpoint_slice("web", slice_ports, [(BACKENDS[0][0], ready)], address_type="IPv4"),
        endpoint_slice("web", slice_ports, [(BACKENDS[0][1], ready)], address_type="IPv6"),
    ):
        assert catalog.upsert(obj["kind"], obj) is None
    compiled = catalog.compile()
    assert sorted(f.address.version for f in compiled.entries) == [4, 6]
    apply(socklb, *compiled.entries.values())

    over4 = run_client(client, "tcp", str(VIP4), "80", "--count", "2", cgroup=lb_cgroup)
    over6 = run_client(client, "tcp", str(VIP6), "80", "--count", "3", cgroup=lb_cgroup)

    assert over4["ok"] == 2 and over4["peers"] == [f"{VIP4}:80"], over4
    assert over6["ok"] == 3 and over6["peers"] == [f"[{VIP6}]:80"], over6
    assert accepted(tmp_path / "b1.log", client) == 2
    assert accepted(tmp_path / "b1.log", client, ipv6=True) == 3


def test_ipv6_translations_and_refusals_are_reported(
    lb_topo: Topology, socklb: SocketLB, lb_cgroup: Path, tmp_path: Path
) -> None:
    client = dual_stack_pods(lb_topo, tmp_path, tcp=(8080,))
    apply(socklb, entry6(80, Protocol.TCP, (BACKENDS[0][1], 8080, 1)), entry6(81, Protocol.TCP))
    since = time.monotonic_ns()  # earlier tests' records may still be in the ring buffers
    seen: list[ServiceTranslation] = []
    socklb.start_events(seen.append, thread=False)
    try:
        assert run_client(client, "tcp", str(VIP6), "80", cgroup=lb_cgroup)["ok"] == 1
        assert run_client(client, "tcp", str(VIP6), "81", cgroup=lb_cgroup)["errors"] == {"ECONNREFUSED": 1}
        socklb.poll_events()
    finally:
        socklb.stop_events()

    ours = [event for event in seen if event.timestamp_ns >= since]
    assert [(e.frontend, e.backend) for e in ours] == [
        (Frontend(VIP6, 80, Protocol.TCP), (IPv6Address(BACKENDS[0][1]), 8080)),
        (Frontend(VIP6, 81, Protocol.TCP), None),
    ]
    assert socklb.lost_events() == 0


def test_a_full_ipv6_service_map_is_reported_and_the_rest_is_written(
    lb_pin_dir: Path, lb_cgroup: Path
) -> None:
    pins = lb_pin_dir.with_name(lb_pin_dir.name + "-full")
    small = SocketLB(pin_dir=pins, cgroup=lb_cgroup, capacities=LBCapacities(services6=2))
    small.load()  # not attached: only its maps are used
    try:
        entries = [
            LBEntry(
                Frontend(IPv6Address(f"fd00:96::f{i}"), 80, Protocol.TCP),
                (LBBackend(IPv6Address("fd00::1"), 80, 1),),
            )
            for i in range(3)
        ]
        result = small.apply({e.frontend: e for e in entries})
        assert len(result.errors) == 1 and "ma_lb6_services is full" in result.errors[0], result.errors
        assert len(small.entries()) == 2  # the others are in force
    finally:
        small.uninstall()
        if pins.exists():
            for child in pins.iterdir():
                child.unlink()
            pins.rmdir()
