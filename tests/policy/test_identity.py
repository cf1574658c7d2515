"""Identities: label filter, determinism across instances (restarts), persistence, CIDR range."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from pathlib import Path

from meshagent.model.kernel_state import IDENTITY_FAMILY6_BIT, IDENTITY_FIRST_CIDR, IDENTITY_FIRST_LABELS
from meshagent.policy.identity import IdentityAllocator, IdentityLabels, LabelFilter, _Space


def labels(ns: str = "x", **pod: str) -> IdentityLabels:
    flt = LabelFilter()
    return IdentityLabels(
        ns, flt.apply({("kubernetes.io/metadata.name", ns)}), flt.apply(frozenset(pod.items()))
    )


def test_hash_like_labels_do_not_split_identities() -> None:
    flt = LabelFilter()
    a = flt.apply({("app", "web"), ("pod-template-hash", "abc")})
    b = flt.apply({("app", "web"), ("pod-template-hash", "def"), ("controller-revision-hash", "1")})
    assert a == b == frozenset({("app", "web")})
    custom = LabelFilter(excluded_keys=frozenset(), excluded_prefixes=("internal.io/",))
    assert custom.apply({("internal.io/x", "1"), ("pod-template-hash", "a")}) == {("pod-template-hash", "a")}


def test_identities_are_derived_so_a_restart_gives_the_same_numbers() -> None:
    first, second = IdentityAllocator(), IdentityAllocator()
    web, db = labels(app="web"), labels(app="db")
    ids = (first.labels_identity(web), first.labels_identity(db))
    # Another agent (or this one after a restart) allocating in the other order agrees.
    assert (second.labels_identity(web), second.labels_identity(db)) == ids
    assert ids[0] != ids[1]
    assert all(IDENTITY_FIRST_LABELS <= i < IDENTITY_FIRST_CIDR for i in ids)
    assert labels("y", app="web") != web and second.labels_identity(labels("y", app="web")) not in ids
    cidr = first.cidr_identity(IPv4Network("10.0.0.0/8"))
    assert cidr >= IDENTITY_FIRST_CIDR and cidr == second.cidr_identity(IPv4Network("10.0.0.0/8"))


def test_collisions_probe_and_the_file_keeps_them(tmp_path: Path) -> None:
    space = _Space(first=10, last=11)  # two numbers: a collision is certain for the third key
    a, b = space.allocate("a"), space.allocate("b")
    assert {a, b} == {10, 11}
    space.release("a")
    assert space.allocate("c") == a  # the freed number is reused

    path = tmp_path / "identities.json"
    alloc = IdentityAllocator(path=path)
    number = alloc.labels_identity(labels(app="web"))
    alloc.save()
    restarted = IdentityAllocator(path=path)
    assert restarted._labels.by_key == {labels(app="web").canonical(): number}
    path.write_text("{not json")
    damaged = IdentityAllocator(path=path)  # a damaged file falls back to derivation, loses nothing
    assert damaged.labels_identity(labels(app="web")) == number


def test_cidr_identities_stay_clear_of_the_family6_bit(tmp_path: Path) -> None:
    alloc = IdentityAllocator()
    numbers = [alloc.cidr_identity(IPv4Network(f"10.{i // 256}.{i % 256}.0/24")) for i in range(2000)]
    assert all(IDENTITY_FIRST_CIDR <= n < IDENTITY_FAMILY6_BIT for n in numbers)
    # A file written when CIDR identities went up to 2^32 keeps its labels; such CIDRs are derived again.
    path = tmp_path / "identities.json"
    web = labels(app="web")
    old_cidr = IPv4Network("192.168.0.0/16")
    path.write_text(
        json.dumps({"labels": {web.canonical(): 4242}, "cidrs": {str(old_cidr): IDENTITY_FAMILY6_BIT + 7}})
    )
    restarted = IdentityAllocator(path=path)
    assert restarted.labels_identity(web) == 4242
    assert IDENTITY_FIRST_CIDR <= restarted.cidr_identity(old_cidr) < IDENTITY_FAMILY6_BIT
