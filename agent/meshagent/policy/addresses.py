"""The addresses the compiler resolves ipBlock peers against: which pods hold each IP, and the CIDR
prefixes that policies name (counted per policy that names them). Sorted views are kept so that "what
lies inside this block" is a bisection, not a scan of every pod; a change drops the view, and the next
question rebuilds it."""

from __future__ import annotations

import bisect
from collections.abc import Set
from ipaddress import IPv4Address, IPv4Network

PodKey = tuple[str, str]  # (namespace, name)


class AddressIndex:
    def __init__(self) -> None:
        self._pods_at: dict[IPv4Address, set[PodKey]] = {}
        self._prefix_refs: dict[IPv4Network, int] = {}
        self._ips_sorted: list[int] | None = None
        self._prefixes_sorted: list[tuple[int, IPv4Network]] | None = None

    # --- pod IPs -------------------------------------------------------------------------------------

    def add_pod(self, ip: IPv4Address, key: PodKey) -> None:
        holders = self._pods_at.get(ip)
        if holders is None:
            self._pods_at[ip] = {key}
            self._ips_sorted = None
        else:
            holders.add(key)

    def remove_pod(self, ip: IPv4Address, key: PodKey) -> None:
        holders = self._pods_at.get(ip)
        if holders is None:
            return
        holders.discard(key)
        if not holders:
            del self._pods_at[ip]
            self._ips_sorted = None

    def pods_at(self, ip: IPv4Address) -> Set[PodKey]:
        return self._pods_at.get(ip, frozenset())

    def holds_pod(self, ip: IPv4Address) -> bool:
        return ip in self._pods_at

    def pod_ips_within(self, cidr: IPv4Network) -> list[IPv4Address]:
        if self._ips_sorted is None:
            self._ips_sorted = sorted(int(ip) for ip in self._pods_at)
        lo = bisect.bisect_left(self._ips_sorted, int(cidr.network_address))
        hi = bisect.bisect_right(self._ips_sorted, int(cidr.broadcast_address))
        return [IPv4Address(value) for value in self._ips_sorted[lo:hi]]

    # --- policy prefixes -----------------------------------------------------------------------------

    def add_prefix(self, prefix: IPv4Network) -> bool:
        """Counts one more policy naming `prefix`; True when it is the first."""
        count = self._prefix_refs.get(prefix, 0) + 1
        self._prefix_refs[prefix] = count
        if count == 1:
            self._prefixes_sorted = None
        return count == 1

    def remove_prefix(self, prefix: IPv4Network) -> bool:
        """Counts one policy fewer naming `prefix`; True when it was the last."""
        count = self._prefix_refs[prefix] - 1
        if count:
            self._prefix_refs[prefix] = count
            return False
        del self._prefix_refs[prefix]
        self._prefixes_sorted = None
        return True

    def has_prefix(self, prefix: IPv4Network) -> bool:
        return prefix in self._prefix_refs

    def prefixes_within(self, cidr: IPv4Network) -> list[IPv4Network]:
        """The named prefixes that lie inside `cidr` (start inside it and are no wider)."""
        if self._prefixes_sorted is None:
            self._prefixes_sorted = sorted((int(p.network_address), p) for p in self._prefix_refs)
        start, end = int(cidr.network_address), int(cidr.broadcast_address)
        found = []
        for index in range(bisect.bisect_left(self._prefixes_sorted, (start,)), len(self._prefixes_sorted)):
            first, prefix = self._prefixes_sorted[index]
            if first > end:
                break
            if prefix.prefixlen >= cidr.prefixlen:
                found.append(prefix)
        return found
