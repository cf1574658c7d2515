"""Opt-in sockmap acceleration with real sockets: established TCP connections between two processes of
the cgroup are spliced socket to socket, over IPv4, IPv6 and IPv4 through a dual-stack listener. Echoes
are byte-identical with it on and off, from 1 byte to 1 MiB; closing either side removes that socket
from the map."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.datapath.maps.ipcache import addr_from_net
from meshagent.datapath.socklb import SocketLB, cgroup2_mount
from meshagent.testing.topology import Pod, Topology

from tests.socklb.conftest import _remove_cgroup
from tests.socklb.helpers import run_client, start_client
from tests.waiting import wait_until

pytestmark = pytest.mark.kernel

SIZES = "1,100,1024,16384,65536,131072,1048576"
PORT = 9100


@pytest.fixture(scope="module")
def accel_cgroup() -> Iterator[Path]:
    path = cgroup2_mount() / f"meshagent-lbaccel-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        _remove_cgroup(path)


@pytest.fixture(scope="module")
def accelerated(accel_cgroup: Path) -> Iterator[SocketLB]:
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-lbaccel-{uuid.uuid4().hex[:8]}"
    lb = SocketLB(pin_dir=pin_dir, cgroup=accel_cgroup, accelerate=True)
    lb.load()
    try:
        lb.attach()
        yield lb
    finally:
        lb.uninstall()
        if pin_dir.exists():
            pin_dir.rmdir()


def _server(pod: Pod, cgroup: Path, listen: str = "0.0.0.0") -> subprocess.Popen[str]:
    process = start_client(pod, "serve", listen, str(PORT), cgroup=cgroup)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def _sockets_of(lb: SocketLB, *pods: Pod) -> list[str]:
    addresses = {pod.ip for pod in pods}
    return [
        f"{addr_from_net(k.local_addr_net)}:{k.local_port}"
        for k in lb.accelerated_sockets()
        if addr_from_net(k.local_addr_net) in addresses
    ]


def test_echoes_are_byte_identical_with_acceleration_on_and_off(
    lb_topo: Topology, accelerated: SocketLB, accel_cgroup: Path, lb_cgroup: Path
) -> None:
    client = lb_topo.add_pod("client", "10.244.6.10")
    server_pod = lb_topo.add_pod("server", "10.244.6.20")
    expected = {size: "identical" for size in SIZES.split(",")}

    server = _server(server_pod, accel_cgroup)
    try:
        before = accelerated.accel_counters()
        on = run_client(
            client,
            "sizes",
            str(server_pod.ip),
            str(PORT),
            "--sizes",
            SIZES,
            "--timeout",
            "10",
            cgroup=accel_cgroup,
        )
        during = accelerated.accel_counters()
    finally:
        server.kill()
        server.wait()
    # Off: the same exchange by processes of a cgroup without the splice (the session's own).
    server = _server(server_pod, lb_cgroup)
    try:
        off = run_client(
            client,
            "sizes",
            str(server_pod.ip),
            str(PORT),
            "--sizes",
            SIZES,
            "--timeout",
            "10",
            cgroup=lb_cgroup,
        )
        after = accelerated.accel_counters()
    finally:
        server.kill()
        server.wait()

    assert on["sizes"] == expected, on
    assert off["sizes"] == expected, off
    # On: the messages really were spliced (both directions, every size); off: the splice saw nothing.
    assert during["redirected"] - before["redirected"] >= 2 * len(expected)
    assert after == during
    assert wait_until(lambda: _sockets_of(accelerated, client, server_pod) == [], timeout=3.0)


def test_closing_either_side_removes_its_socket(
    lb_topo: Topology, accelerated: SocketLB, accel_cgroup: Path
) -> None:
    client = lb_topo.add_pod("client", "10.244.6.10")
    server_pod = lb_topo.add_pod("server", "10.244.6.20")
    server = _server(server_pod, accel_cgroup)
    held = start_client(client, "hold", str(server_pod.ip), str(PORT), "--timeout", "5", cgroup=accel_cgroup)
    try:
        assert held.stdout is not None and held.stdin is not None
        assert '"first": true' in held.stdout.readline()
        both = _sockets_of(accelerated, client, server_pod)
        assert f"{server_pod.ip}:{PORT}" in both  # the accepted server socket
        assert any(entry.startswith(f"{client.ip}:") for entry in both)  # the client's
        assert len(both) == 2  # the client's and the accepted server socket

        server.kill()  # the server side closes first
        server.wait()
        assert wait_until(lambda: _sockets_of(accelerated, server_pod) == [], timeout=3.0)

        held.stdin.write("go\n")
        held.stdin.flush()
        held.wait(timeout=10)  # its exchange fails (the peer is gone); then it exits and closes
        assert wait_until(lambda: _sockets_of(accelerated, client, server_pod) == [], timeout=3.0)
    finally:
        for process in (held, server):
            process.kill()
            process.wait()


def test_sockhash_key_mirror_matches_the_compiled_size(accelerated: SocketLB) -> None:
    # BCC cannot build a table object for a sockhash ("Unknown table type 18"); the module still knows its
    # key size.
    import ctypes

    from bcc import libbcc
    from meshagent.datapath.maps import lb_sockhash

    size = libbcc.lib.bpf_table_key_size(accelerated.bpf.module, lb_sockhash.MAP_NAME.encode())
    assert size == ctypes.sizeof(lb_sockhash.SockKey) == 16


def test_connections_without_a_local_peer_take_the_normal_path(
    lb_topo: Topology, accelerated: SocketLB, accel_cgroup: Path, lb_cgroup: Path
) -> None:
    client = lb_topo.add_pod("client", "10.244.6.10")
    server_pod = lb_topo.add_pod("server", "10.244.6.20")
    server = _server(server_pod, lb_cgroup)  # not accelerated: its sockets never enter the map
    try:
        before = accelerated.accel_counters()
        result = run_client(
            client, "sizes", str(server_pod.ip), str(PORT), "--sizes", "1,65536", cgroup=accel_cgroup
        )
        after = accelerated.accel_counters()
    finally:
        server.kill()
        server.wait()

    assert result["sizes"] == {"1": "identical", "65536": "identical"}
    assert after["redirected"] == before["redirected"]  # nothing was spliced...
    assert after["passed"] > before["passed"]  # ...the client's sends went the normal way


@pytest.mark.parametrize("case", ["IPv6", "IPv4 to a dual-stack listener"])
def test_ipv6_and_dual_stack_sockets_are_spliced(
    lb_topo: Topology, accelerated: SocketLB, accel_cgroup: Path, case: str
) -> None:
    client = lb_topo.add_pod("client", "10.244.6.10", ipv6="fd00:244::6:10")
    server_pod = lb_topo.add_pod("server", "10.244.6.20", ipv6="fd00:244::6:20")
    # The listener is dual-stack either way: an IPv4 client's accepted socket is AF_INET6 with v4-mapped
    # addresses, and must still find the client's AF_INET socket.
    server = _server(server_pod, accel_cgroup, listen="::")
    target = str(server_pod.ipv6) if case == "IPv6" else str(server_pod.ip)
    try:
        before = accelerated.accel_counters()
        result = run_client(
            client, "sizes", target, str(PORT), "--sizes", "1,65536,1048576", cgroup=accel_cgroup
        )
        after = accelerated.accel_counters()
    finally:
        server.kill()
        server.wait()

    assert result["sizes"] == {"1": "identical", "65536": "identical", "1048576": "identical"}, result
    assert after["redirected"] - before["redirected"] >= 2 * 3  # both directions, every size
    assert wait_until(lambda: accelerated.accelerated_sockets6() == [], timeout=3.0)


def test_ipv6_sockhash_key_mirror_matches_the_compiled_size(accelerated: SocketLB) -> None:
    import ctypes

    from bcc import libbcc
    from meshagent.datapath.maps import lb_sockhash

    size = libbcc.lib.bpf_table_key_size(accelerated.bpf.module, lb_sockhash.MAP6_NAME.encode())
    assert size == ctypes.sizeof(lb_sockhash.SockKey6) == 40
