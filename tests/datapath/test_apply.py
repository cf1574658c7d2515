"""apply() and apply_diff() leave the kernel maps exactly as a fresh compile of the desired state."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

import pytest
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.maps.policy import compile_entries
from meshagent.model.kernel_state import (
    IDENTITY_ANY,
    Action,
    Direction,
    EndpointEntry,
    IPCacheEntry,
    KernelState,
    PolicyEntry,
    Protocol,
)
from meshagent.testing.topology import Topology

pytestmark = pytest.mark.kernel


@dataclass(frozen=True)
class Diff:
    upsert_endpoints: frozenset[EndpointEntry] = field(default_factory=frozenset)
    delete_endpoints: frozenset[EndpointEntry] = field(default_factory=frozenset)
    upsert_ipcache: frozenset[IPCacheEntry] = field(default_factory=frozenset)
    delete_ipcache: frozenset[IPCacheEntry] = field(default_factory=frozenset)
    upsert_policy: frozenset[PolicyEntry] = field(default_factory=frozenset)
    delete_policy: frozenset[PolicyEntry] = field(default_factory=frozenset)


def _random_entry(rng: random.Random) -> PolicyEntry:
    protocol = rng.choice([Protocol.ANY, Protocol.TCP, Protocol.UDP])
    lo = 0 if protocol == Protocol.ANY or rng.random() < 0.3 else rng.randint(1, 2000)
    hi = lo if lo == 0 else lo + rng.randint(0, 300)
    return PolicyEntry(
        endpoint_id=rng.randint(1, 2),
        direction=rng.choice(list(Direction)),
        peer_identity=rng.choice([IDENTITY_ANY, 300, 301]),
        protocol=protocol,
        port_lo=lo,
        port_hi=hi,
        action=rng.choice([Action.ALLOW, Action.ALLOW, Action.DENY]),
        rule_id=rng.randint(1, 9),
        audit=rng.random() < 0.1,
    )


def _key(entry: PolicyEntry) -> tuple[int, ...]:
    return (
        entry.endpoint_id,
        entry.direction,
        entry.peer_identity,
        entry.protocol,
        entry.port_lo,
        entry.port_hi,
    )


def test_diffs_end_where_a_full_compile_does(datapath: Datapath, topo: Topology) -> None:
    a = topo.add_pod("a", "10.244.4.10")
    b = topo.add_pod("b", "10.244.4.20")
    endpoints = frozenset({EndpointEntry(a.ifindex, 1, 300, a.ip), EndpointEntry(b.ifindex, 2, 301, b.ip)})
    ipcache = {
        IPCacheEntry(IPv4Network("10.244.4.10/32"), 300),
        IPCacheEntry(IPv4Network("10.244.4.20/32"), 301),
    }
    rules: dict[tuple[int, ...], PolicyEntry] = {}
    datapath.apply(KernelState(endpoints=endpoints, ipcache=frozenset(ipcache)))
    rng = random.Random(7)
    for _ in range(40):
        upserts = {_random_entry(rng) for _ in range(rng.randint(0, 4))}
        deletes = set(rng.sample(sorted(rules.values()), min(len(rules), rng.randint(0, 3))))
        deletes = {d for d in deletes if _key(d) not in {_key(u) for u in upserts}}
        new_cidr = IPCacheEntry(
            IPv4Network(f"10.250.{rng.randint(0, 3)}.0/24"), rng.choice([1 << 24, 2 << 24])
        )
        replaced = {e for e in ipcache if e.cidr == new_cidr.cidr}
        for entry in deletes:
            rules.pop(_key(entry))
        for entry in upserts:
            rules[_key(entry)] = entry
        ipcache = (ipcache - replaced) | {new_cidr}
        result = datapath.apply_diff(
            Diff(
                upsert_policy=frozenset(upserts),
                delete_policy=frozenset(deletes),
                upsert_ipcache=frozenset({new_cidr}),
            )
        )
        assert result.ok, result.errors
        found_endpoints, found_ipcache, found_policy = datapath.state()
        assert found_policy == compile_entries(rules.values())
        assert found_ipcache == ipcache
        assert set(found_endpoints.values()) == set(endpoints)

    # Removing an endpoint by diff detaches it; the other keeps its state.
    removed = next(e for e in endpoints if e.ifindex == a.ifindex)
    result = datapath.apply_diff(Diff(delete_endpoints=frozenset({removed})))
    assert result.detached == 1
    assert set(datapath.state()[0]) == {b.ifindex}
    assert IPv4Address("10.244.4.20") in {e.ipv4 for e in datapath.state()[0].values()}
