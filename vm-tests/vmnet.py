"""Network namespaces for the kernel matrix's tests: two namespaces joined by a veth pair."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class VethPair:
    """Two network namespaces joined by a veth pair: `a` (client side) and `b` (server side)."""

    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str
    ip_a: str
    ip_b: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextmanager
def veth_pair_in_netns() -> Iterator[VethPair]:
    # Names carry the pid so parallel or leftover runs never collide; addresses live only inside the
    # namespaces made here, so no packet of a test can leave them.
    tag = f"vmt{os.getpid() % 100000}"
    pair = VethPair(
        ns_a=f"{tag}-a",
        ns_b=f"{tag}-b",
        dev_a=f"{tag}a",
        dev_b=f"{tag}b",
        ip_a="10.213.0.1",
        ip_b="10.213.0.2",
    )
    try:
        _ip("netns", "add", pair.ns_a)
        _ip("netns", "add", pair.ns_b)
        _ip(
            "link",
            "add",
            pair.dev_a,
            "netns",
            pair.ns_a,
            "type",
            "veth",
            "peer",
            pair.dev_b,
            "netns",
            pair.ns_b,
        )
        for ns, dev, addr in ((pair.ns_a, pair.dev_a, pair.ip_a), (pair.ns_b, pair.dev_b, pair.ip_b)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in (pair.ns_a, pair.ns_b):
            # Deleting a namespace deletes its end of the veth, and with it the peer.
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
