"""ma_policy: (endpoint, peer identity, direction, protocol, port) -> allow/deny (LPM trie).

This module is the one place where PolicyEntry values become trie entries:
- a port range becomes the few prefix-aligned blocks of ports that cover it exactly;
- within one lookup (same endpoint, peer identity, direction) the trie returns only the longest match,
  so a more specific entry under a broader deny is written with the deny's value: a deny always wins;
- two rules landing on the same key keep the strongest (deny, then audited deny, then allow; then the
  lowest rule id, so the result does not depend on input order).
"""

from __future__ import annotations

import ctypes
import socket
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from meshagent.model.kernel_state import Action, PolicyEntry, Protocol

MAP_NAME = "ma_policy"

# MA_POLICY_PREFIX_* in bpf/lib/types.h: bits of (endpoint_id, peer_identity, direction) always match.
PREFIX_ANY_PROTO = 72
PREFIX_ANY_PORT = 80
PREFIX_FULL = 96
FLAG_AUDIT = 0x01  # MA_POLICY_F_AUDIT


class PolicyKey(ctypes.Structure):
    """Must match struct ma_policy_key in bpf/lib/types.h."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint32),
        ("peer_identity", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("dport_net", ctypes.c_uint16),  # network order
    ]


class PolicyValue(ctypes.Structure):
    """Must match struct ma_policy_value in bpf/lib/types.h."""

    _fields_ = [
        ("rule_id", ctypes.c_uint32),
        ("action", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


C_FIELD_NAMES = {"dport_net": "dport"}


class TrieKey(NamedTuple):
    """A trie key in host order; `dport` is the first port of the block the prefix covers."""

    prefixlen: int
    endpoint_id: int
    peer_identity: int
    direction: int
    protocol: int
    dport: int

    @property
    def _bits(self) -> int:
        """Protocol and port as one 24-bit number, the part a prefix may cut short."""
        return (self.protocol << 16) | self.dport

    def covers(self, other: TrieKey) -> bool:
        """True when every packet matching `other` also matches this key."""
        if (self.endpoint_id, self.peer_identity, self.direction) != (
            other.endpoint_id,
            other.peer_identity,
            other.direction,
        ) or self.prefixlen > other.prefixlen:
            return False
        shift = PREFIX_FULL - self.prefixlen
        return (self._bits >> shift) == (other._bits >> shift)


class TrieValue(NamedTuple):
    rule_id: int
    action: int
    flags: int

    @property
    def strength(self) -> int:
        """Higher wins: deny over audited deny over allow."""
        if self.action == Action.DENY:
            return 1 if self.flags & FLAG_AUDIT else 2
        return 0

    def stronger_than(self, other: TrieValue) -> bool:
        return (self.strength, -self.rule_id) > (other.strength, -other.rule_id)


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Covers lo..hi exactly with aligned blocks; returns (first port, prefix bits out of 16)."""
    blocks: list[tuple[int, int]] = []
    port = lo
    while port <= hi:
        size_bits = 0
        # Grow the block while it stays aligned and inside the range.
        while (
            size_bits < 16 and port % (1 << (size_bits + 1)) == 0 and port + (1 << (size_bits + 1)) - 1 <= hi
        ):
            size_bits += 1
        blocks.append((port, 16 - size_bits))
        port += 1 << size_bits
    return blocks


def _trie_keys(entry: PolicyEntry) -> list[TrieKey]:
    base = (entry.endpoint_id, entry.peer_identity, int(entry.direction))
    if entry.protocol == Protocol.ANY:
        return [TrieKey(PREFIX_ANY_PROTO, *base, 0, 0)]
    if entry.any_port:
        return [TrieKey(PREFIX_ANY_PORT, *base, int(entry.protocol), 0)]
    return [
        TrieKey(PREFIX_ANY_PORT + bits, *base, int(entry.protocol), first)
        for first, bits in port_blocks(entry.port_lo, entry.port_hi)
    ]


def compile_entries(entries: Iterable[PolicyEntry]) -> dict[TrieKey, TrieValue]:
    """The exact trie content that implements `entries` with deny-wins semantics."""
    trie: dict[TrieKey, TrieValue] = {}
    for entry in entries:
        audit = entry.audit and entry.action == Action.DENY  # only a deny can be softened to a report
        value = TrieValue(entry.rule_id, int(entry.action), FLAG_AUDIT if audit else 0)
        for key in _trie_keys(entry):
            current = trie.get(key)
            if current is None or value.stronger_than(current):
                trie[key] = value

    # A longest-prefix match would let a specific entry hide a broader deny: give it the deny's value.
    groups: dict[tuple[int, int, int], list[TrieKey]] = defaultdict(list)
    for key in trie:
        groups[(key.endpoint_id, key.peer_identity, key.direction)].append(key)
    result = dict(trie)
    for keys in groups.values():
        denies = [key for key in keys if trie[key].action == Action.DENY]
        if not denies:
            continue
        for key in keys:
            for deny_key in denies:
                if deny_key != key and deny_key.covers(key) and trie[deny_key].stronger_than(result[key]):
                    result[key] = trie[deny_key]
    return result


def encode(key: TrieKey, value: TrieValue) -> tuple[PolicyKey, PolicyValue]:
    c_key = PolicyKey(
        key.prefixlen,
        key.endpoint_id,
        key.peer_identity,
        key.direction,
        key.protocol,
        socket.htons(key.dport),
    )
    return c_key, PolicyValue(value.rule_id, value.action, value.flags, 0)


def decode(key: PolicyKey, value: PolicyValue) -> tuple[TrieKey, TrieValue]:
    trie_key = TrieKey(
        key.prefixlen,
        key.endpoint_id,
        key.peer_identity,
        key.direction,
        key.protocol,
        socket.ntohs(key.dport_net),
    )
    return trie_key, TrieValue(value.rule_id, value.action, value.flags)
