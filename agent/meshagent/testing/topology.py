"""A throw-away node with pods, built from network namespaces (tests, benchmarks and the demo).

    node netns   : plays the node; the agent attaches to the pods' host-side veths here. Forwarding is on,
                   and its default route is `unreachable`: nothing in it can reach the real network.
    pod netns    : one per pod, `eth0` with the pod's /32 and a default route via 169.254.1.1, an
                   address of the node's loopback that every host-side veth answers ARP for (routed
                   veths, one /32 route per pod in the node, as Calico and Cilium do). Dual-stack by
                   default: the pod also gets an IPv6 /128 (derived from its IPv4 address unless given)
                   with a default route via fe80::1, which every host-side veth holds.

Everything is deleted by close() (also on failure: use it as a context manager). Names carry a per-run
prefix so that runs never collide with one another or with anything else on the machine.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

GATEWAY = "169.254.1.1"
GATEWAY6 = "fe80::1"  # the pods' IPv6 gateway: a link-local address on every host-side veth
# Where a pod's IPv6 address comes from when none is given: its IPv4 address in the last 32 bits, so
# that distinct IPv4 addresses give distinct IPv6 ones and a reader can tell which pod an address is.
DERIVED_POD_NETWORK6 = IPv6Network("fd00:64::/96")
_counter = itertools.count()


def derived_ipv6_of(ip: IPv4Address) -> IPv6Address:
    """The IPv6 address a pod with IPv4 address `ip` gets when its caller names none."""
    return DERIVED_POD_NETWORK6.network_address + int(ip)


def _ip(*args: str, netns: str | None = None) -> str:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def _sysctl(netns: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"], check=True)


def _no_duplicate_address_detection(netns: str) -> None:
    """Interfaces made in `netns` from now on use their IPv6 link-local addresses at once. With the
    kernel's duplicate detection, a new veth's link-local address stays tentative for a second or more,
    and until then neighbour discovery (for the pod's gateway, or across the underlay) cannot start: a
    pod's first IPv6 connection would stall. Every address here is ours; none can be a duplicate."""
    _sysctl(netns, "net.ipv6.conf.default.accept_dad", "0")
    _sysctl(netns, "net.ipv6.conf.all.accept_dad", "0")


@dataclass
class Pod:
    name: str
    netns: str
    ip: IPv4Address
    host_ifname: str
    ifindex: int  # of the host-side veth, in the node namespace
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    ipv6: IPv6Address | None = None

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *command]

    def run(
        self, *command: str, timeout: float = 30.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*command), capture_output=True, text=True, timeout=timeout, check=check
        )

    def popen(self, *command: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*command), text=True, **kwargs)

    def probe(
        self,
        protocol: str,
        ip: IPv4Address | IPv6Address | str,
        port: int,
        *,
        timeout: float = 1.0,
        size: int = 32,
        bind: str | None = None,
    ) -> dict[str, Any]:
        """One TCP or UDP echo exchange from this pod; returns netprobe's JSON result."""
        command = [
            sys.executable,
            "-m",
            "meshagent.testing.netprobe",
            protocol,
            str(ip),
            str(port),
            "--timeout",
            str(timeout),
            "--size",
            str(size),
        ]
        if bind:
            command += ["--bind", bind]
        result = self.run(*command, timeout=timeout + 20)
        try:
            parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            parsed = {"ok": False, "error": f"netprobe failed: {result.stderr.strip()[-300:]}"}
        return parsed

    def talk(
        self, ip: IPv4Address | IPv6Address | str, port: int, *, seconds: float
    ) -> subprocess.Popen[str]:
        """Starts netprobe's `talk` in this pod: one connection kept busy; read its output to judge."""
        return self.popen(
            sys.executable,
            "-m",
            "meshagent.testing.netprobe",
            "talk",
            str(ip),
            str(port),
            "--seconds",
            str(seconds),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def ping(self, ip: IPv4Address | IPv6Address | str, *, timeout: float = 1.0) -> bool:
        result = self.run("ping", "-c", "1", "-W", str(max(1, int(timeout))), str(ip), timeout=timeout + 5)
        return result.returncode == 0

    def serve(self, *, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = (), log: Path | None = None) -> None:
        """Starts echo servers in this pod and waits until they listen."""
        command = [
            sys.executable,
            "-m",
            "meshagent.testing.netprobe",
            "serve",
            "--tcp",
            ",".join(map(str, tcp)),
            "--udp",
            ",".join(map(str, udp)),
        ]
        if log is not None:
            command += ["--log", str(log)]
        if self.ipv6 is not None:
            command.append("--ipv6")
        process = self.popen(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            process.kill()
            raise RuntimeError(
                f"server in pod {self.name} did not start: {process.stderr.read() if process.stderr else ''}"
            )
        self.servers.append(process)

    def stop_servers(self) -> None:
        for process in self.servers:
            process.kill()
            process.wait()
        self.servers.clear()


def _ipv6_for(ip: IPv4Address, ipv6: str | IPv6Address | bool) -> IPv6Address | None:
    if ipv6 is True:
        return derived_ipv6_of(ip)
    if ipv6 is False:
        return None
    return IPv6Address(str(ipv6))


class Topology:
    """A node namespace with pods; use as a context manager so it is always torn down."""

    def __init__(self, *, prefix: str | None = None) -> None:
        self.prefix = prefix or f"ma{os.getpid() % 100000}x{next(_counter)}"
        self.node = f"{self.prefix}-node"
        self.pods: dict[str, Pod] = {}
        self._index = itertools.count()
        self._created = False

    def __enter__(self) -> Topology:
        self.create()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def create(self) -> None:
        _ip("netns", "add", self.node)
        self._created = True
        _ip("link", "set", "lo", "up", netns=self.node)
        _sysctl(self.node, "net.ipv4.ip_forward", "1")
        _sysctl(self.node, "net.ipv4.conf.all.rp_filter", "0")
        _sysctl(self.node, "net.ipv4.conf.default.rp_filter", "0")
        # The pods' gateway is a local address of the node, so every host-side veth answers ARP for it.
        _ip("addr", "add", f"{GATEWAY}/32", "dev", "lo", netns=self.node)
        # No way off the machine: anything not routed to a pod is unreachable.
        _ip("route", "add", "unreachable", "default", netns=self.node)
        _ip("-6", "route", "add", "unreachable", "default", netns=self.node)
        _sysctl(self.node, "net.ipv6.conf.all.forwarding", "1")
        _no_duplicate_address_detection(self.node)

    def add_pod(
        self,
        name: str,
        ip: str | IPv4Address,
        *,
        ifindex: int | None = None,
        ipv6: str | IPv6Address | bool = True,
    ) -> Pod:
        """A dual-stack pod: its IPv4 address and an IPv6 one, `ipv6` if it is an address, derived from
        the IPv4 address if it is True (derived_ipv6_of), none if it is False (an IPv4-only pod, for the
        tests that need one). `ifindex` asks for that number for its host-side veth (to make an interface
        that takes a deleted one's number, as the kernel may do on its own)."""
        address = IPv4Address(str(ip))
        address6 = _ipv6_for(address, ipv6)
        index = next(self._index)
        netns = f"{self.prefix}-{name}"
        host_ifname = f"{self.prefix[:9]}h{index}"[:15]
        _ip("netns", "add", netns)
        try:
            _no_duplicate_address_detection(netns)
            _ip(
                "link",
                "add",
                host_ifname,
                *(["index", str(ifindex)] if ifindex is not None else []),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns,
                netns=self.node,
            )
            _ip("link", "set", "lo", "up", netns=netns)
            _ip("addr", "add", f"{ip}/32", "dev", "eth0", netns=netns)
            _ip("link", "set", "eth0", "up", netns=netns)
            _ip("route", "add", GATEWAY, "dev", "eth0", "scope", "link", netns=netns)
            _ip("route", "add", "default", "via", GATEWAY, "dev", "eth0", netns=netns)
            _sysctl(self.node, f"net.ipv4.conf.{host_ifname}.proxy_arp", "1")
            _sysctl(self.node, f"net.ipv4.conf.{host_ifname}.rp_filter", "0")
            _ip("link", "set", host_ifname, "up", netns=self.node)
            _ip("route", "add", f"{ip}/32", "dev", host_ifname, netns=self.node)
            if address6 is not None:
                # Routed like IPv4: a /128 per pod on the node, the pod's default via a link-local
                # gateway that the host-side veth holds. No duplicate detection: the addresses are ours.
                _ip("-6", "addr", "add", f"{GATEWAY6}/64", "dev", host_ifname, "nodad", netns=self.node)
                _ip("-6", "addr", "add", f"{address6}/128", "dev", "eth0", "nodad", netns=netns)
                _ip("-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0", netns=netns)
                _ip("-6", "route", "add", f"{address6}/128", "dev", host_ifname, netns=self.node)
            info = json.loads(_ip("-j", "link", "show", host_ifname, netns=self.node))
        except Exception:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
            raise
        pod = Pod(
            name=name,
            netns=netns,
            ip=address,
            host_ifname=host_ifname,
            ifindex=int(info[0]["ifindex"]),
            ipv6=address6,
        )
        self.pods[name] = pod
        return pod

    def remove_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        pod.stop_servers()
        # Deleting the veth here (not only with the namespace, which the kernel finishes later) removes
        # its /32 route now, so a new pod may take the same address at once.
        subprocess.run(["ip", "-n", self.node, "link", "del", pod.host_ifname], capture_output=True)
        subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True)

    def close(self) -> None:
        for name in list(self.pods):
            self.remove_pod(name)
        if self._created:
            subprocess.run(["ip", "netns", "del", self.node], capture_output=True)
            self._created = False
        # Deleting a namespace is asynchronous for its interfaces; give the kernel a moment.
        time.sleep(0.05)
