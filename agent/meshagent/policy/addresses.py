"""The addresses the compiler resolves ipBlock peers against: which pods hold each IP, and the CIDR
prefixes that policies name (counted per policy that names them). Both address families live here, ordered
by (family, address), so that "what lies inside this block" is a bisection within the block's family, not
a scan of every pod; a change drops the sorted view, and the next question rebuilds it."""

from __future__ import annotations

import bisect
from collections.abc import Set
from ipaddress import ip_address

from meshagent.model.ip import IPAddress, IPNetwork

PodKey = tuple[str, str]  # (namespace, name)


def _bounds(cidr: IPNetwork) -> tuple[tuple[int, int], tuple[int, int]]:
    return (cidr.version, int(cidr.network_address)), (cidr.version, int(cidr.broadcast_address))


class AddressIndex:
    def __init__(self) -> None:
        self._pods_at: dict[IPAddress, set[PodKey]] = {}
        self._prefix_refs: dict[IPNetwork, int] = {}
        self._ips_sorted: list[tuple[int, int]] | None = None
        self._prefixes_sorted: list[tuple[int, int, IPNetwork]] | None = None

    # --- pod IPs -------------------------------------------------------------------------------------

    def add_pod(self, ip: IPAddress, key: PodKey) -> None:
        holders = self._pods_at.get(ip)
        if holders is None:
            self._pods_at[ip] = {key}
            self._ips_sorted = None
        else:
            holders.add(key)

    def remove_pod(self, ip: IPAddress, key: PodKey) -> None:
        holders = self._pods_at.get(ip)
        if holders is None:
            return
        holders.discard(key)
        if not holders:
            del self._pods_at[ip]
            self._ips_sorted = None

    def pods_at(self, ip: IPAddress) -> Set[PodKey]:
        return self._pods_at.get(ip, frozenset())

    def holds_pod(self, ip: IPAddress) -> bool:
        return ip in self._pods_at

    def pod_ips_within(self, cidr: IPNetwork) -> list[IPAddress]:
        if self._ips_sorted is None:
            self._ips_sorted = sorted((ip.version, int(ip)) for ip in self._pods_at)
        first, last = _bounds(cidr)
        lo = bisect.bisect_left(self._ips_sorted, first)
        hi = bisect.bisect_right(self._ips_sorted, last)
        return [ip_address(value) for _version, value in self._ips_sorted[lo:hi]]

    # --- policy prefixes -----------------------------------------------------------------------------

    def add_prefix(self, prefix: IPNetwork) -> bool:
        """Counts one more policy naming `prefix`; True when it is the first."""
        count = self._prefix_refs.get(prefix, 0) + 1
        self._prefix_refs[prefix] = count
        if count == 1:
            self._prefixes_sorted = None
        return count == 1

    def remove_prefix(self, prefix: IPNetwork) -> bool:
        """Counts one policy fewer naming `prefix`; True when it was the last."""
        count = self._prefix_refs[prefix] - 1
        if count:
            self._prefix_refs[prefix] = count
            return False
        del self._prefix_refs[prefix]
        self._prefixes_sorted = None
        return True

    def has_prefix(self, prefix: IPNetwork) -> bool:
        return prefix in self._prefix_refs

    def prefixes_within(self, cidr: IPNetwork) -> list[IPNetwork]:
        """The named prefixes that lie inside `cidr` (start inside it and are no wider)."""
        if self._prefixes_sorted is None:
            self._prefixes_sorted = sorted(
                ((p.version, int(p.network_address), p) for p in self._prefix_refs), key=lambda t: t[:2]
            )
        (version, start), (_, end) = _bounds(cidr)
        found = []
        index = bisect.bisect_left(self._prefixes_sorted, (version, start), key=lambda t: t[:2])
        for v, first, prefix in self._prefixes_sorted[index:]:
            if v != version or first > end:
                break
            if prefix.prefixlen >= cidr.prefixlen:
                found.append(prefix)
        return found
