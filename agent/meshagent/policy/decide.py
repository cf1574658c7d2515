"""Per endpoint and direction: rules (already resolved to identities and port ranges) -> policy entries.

The datapath (see docs/policy.md) looks up, for a packet's peer identity and for IDENTITY_ANY, the most
specific entry matching protocol and port; a DENY from either lookup wins over an ALLOW, an audited DENY
passes as audited, and no match falls to the endpoint's default: deny (or audited pass) when a
NetworkPolicy isolates it in that direction, allow otherwise. Entries are looked up in both cases
(bpf/lib/policy.h).

So we evaluate the full decision (admin rules by priority, then NetworkPolicy) for every class of peer and
every protocol/port segment, and emit entries that never overlap within one peer key:
- IDENTITY_ANY entries carry what holds for a peer no rule names (NetworkPolicy rules without peers);
- per-identity entries carry where a named peer's verdict differs from that (or its whole table when that
  is smaller). Admin peers are never "any", so the ANY lookup only ever yields ALLOW or nothing, and a
  per-identity DENY always wins over it, which is what admin Deny over NetworkPolicy needs.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from meshagent.model.admin_policy import AdminAction
from meshagent.model.kernel_state import IDENTITY_ANY, RULE_ID_NONE, Action, Direction, PolicyEntry, Protocol

PORTED_PROTOCOLS = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)
# Protocols the datapath classifies; anything else is dropped for endpoints under policy (UNKNOWN_L4).
PROTOCOLS = (*PORTED_PROTOCOLS, Protocol.ICMP)
PORT_MIN, PORT_MAX = 1, 65535


@dataclass(frozen=True, order=True)
class PortRange:
    protocol: Protocol
    lo: int
    hi: int


@dataclass(frozen=True)
class Atom:
    """Peers (None: any peer, world included) x ports (None: every protocol and port)."""

    peers: frozenset[int] | None
    ports: tuple[PortRange, ...] | None

    def matches_port(self, protocol: Protocol, port: int) -> bool:
        if self.ports is None:
            return True
        return any(r.protocol == protocol and r.lo <= port <= r.hi for r in self.ports)


@dataclass(frozen=True)
class AdminLayer:
    rule_id: int
    action: AdminAction
    audit: bool
    atoms: tuple[Atom, ...]


@dataclass(frozen=True)
class AllowRule:
    rule_id: int
    atoms: tuple[Atom, ...]


@dataclass(frozen=True)
class DirectionRules:
    """What applies to one endpoint in one direction. `isolated`: some NetworkPolicy selects it for this
    direction; `np_audit`: all of those are in audit mode."""

    admin: tuple[AdminLayer, ...] = ()
    allows: tuple[AllowRule, ...] = ()
    isolated: bool = False
    np_audit: bool = False

    @property
    def enforce(self) -> bool:
        """The endpoint's default-deny flag: only NetworkPolicy isolation denies by default."""
        return self.isolated

    @property
    def has_rules(self) -> bool:
        # Entries are looked up whether or not the endpoint enforces: admin rules alone need no isolation.
        return self.isolated or bool(self.admin)

    @property
    def audit(self) -> bool:
        return self.isolated and self.np_audit


# A cell's outcome: (action, rule id, audit), or None for "no entry" (the endpoint's default applies).
Value = tuple[Action, int, bool] | None


class CompileError(RuntimeError):
    """The rules cannot be encoded in the entry kinds the datapath has (a bug, never input)."""


def _segments(rules: DirectionRules) -> dict[Protocol, list[tuple[int, int]]]:
    bounds: dict[Protocol, set[int]] = {p: {PORT_MIN, PORT_MAX + 1} for p in PORTED_PROTOCOLS}
    for atom in _all_atoms(rules):
        for r in atom.ports or ():
            if r.protocol in bounds:
                bounds[r.protocol].update((r.lo, r.hi + 1))
    result: dict[Protocol, list[tuple[int, int]]] = {}
    for proto, points in bounds.items():
        ordered = sorted(points)
        result[proto] = [(lo, nxt - 1) for lo, nxt in itertools.pairwise(ordered)]
    result[Protocol.ICMP] = [(0, 0)]
    return result


def _all_atoms(rules: DirectionRules) -> Iterable[Atom]:
    for layer in rules.admin:
        yield from layer.atoms
    for allow in rules.allows:
        yield from allow.atoms


def _decide(rules: DirectionRules, active: set[int], protocol: Protocol, port: int) -> Value:
    """The outcome for a peer class whose applicable atoms (by id()) are `active`."""

    def hit(atoms: tuple[Atom, ...]) -> bool:
        return any(id(a) in active and a.matches_port(protocol, port) for a in atoms)

    pending_audit = RULE_ID_NONE
    outcome: Value = None
    decided = False
    for layer in rules.admin:
        if not hit(layer.atoms):
            continue
        if layer.audit:
            # An audited admin rule never decides: a Deny only marks what would have been dropped.
            if layer.action is AdminAction.DENY and pending_audit == RULE_ID_NONE:
                pending_audit = layer.rule_id
            continue
        if layer.action is AdminAction.DENY:
            return (Action.DENY, layer.rule_id, False)
        if layer.action is AdminAction.ALLOW:
            outcome = (Action.ALLOW, layer.rule_id, False)
            decided = True
        break  # Allow decided; Pass hands over to NetworkPolicy
    if not decided and rules.isolated:
        outcome = next(((Action.ALLOW, a.rule_id, False) for a in rules.allows if hit(a.atoms)), None)
    # No entry means allowed when nothing isolates the endpoint, so an audited Deny has to say so there too.
    allowed = outcome is not None or not rules.isolated
    if pending_audit != RULE_ID_NONE and allowed:
        return (Action.DENY, pending_audit, True)
    return outcome


Table = dict[Protocol, list[Value]]


def _table(rules: DirectionRules, segments: dict[Protocol, list[tuple[int, int]]], active: set[int]) -> Table:
    return {proto: [_decide(rules, active, proto, lo) for lo, _ in segs] for proto, segs in segments.items()}


def _same(a: Value, b: Value) -> bool:
    # Two lookups that agree on action and audit give the same verdict; rule ids only name it.
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and a[2] == b[2]


Cell = tuple[Protocol, int, int, Value]


def _encode(table: Table, segments: dict[Protocol, list[tuple[int, int]]]) -> list[Cell]:
    """Non-overlapping (protocol, lo, hi, value) cells; (ANY, 0, 0) when one value covers everything."""
    merged: dict[Protocol, list[tuple[int, int, Value]]] = {}
    for proto, values in table.items():
        runs: list[tuple[int, int, Value]] = []
        for (lo, hi), value in zip(segments[proto], values, strict=True):
            if runs and runs[-1][2] == value:
                runs[-1] = (runs[-1][0], hi, value)
            else:
                runs.append((lo, hi, value))
        merged[proto] = runs
    firsts = {runs[0][2] for runs in merged.values()}
    if all(len(runs) == 1 for runs in merged.values()) and len(firsts) == 1:
        value = next(iter(firsts))
        return [] if value is None else [(Protocol.ANY, 0, 0, value)]
    cells: list[Cell] = []
    for proto, runs in merged.items():
        if len(runs) == 1:
            if runs[0][2] is not None:
                cells.append((proto, 0, 0, runs[0][2]))
            continue
        cells.extend((proto, lo, hi, value) for lo, hi, value in runs if value is not None)
    return cells


def compile_direction(
    rules: DirectionRules,
    *,
    endpoint_id: int,
    direction: Direction,
    only_peers: AbstractSet[int] | None = None,
) -> dict[int, list[PolicyEntry]]:
    """The entries for one endpoint and direction, by peer identity (IDENTITY_ANY included).

    `only_peers`: compute just these identities' entries (and not IDENTITY_ANY's). A peer's entries
    depend only on the atoms naming it and on the "any peer" atoms, and the encoding is canonical (maximal
    runs, whatever the segmentation), so this equals the same peers' part of a full compile.
    """
    if not rules.has_rules:
        return {}
    segments = _segments(rules)
    any_atoms = {id(a) for a in _all_atoms(rules) if a.peers is None}
    membership: dict[int, set[int]] = defaultdict(set)
    for atom in _all_atoms(rules):
        if atom.peers is None:
            continue
        if only_peers is None:
            for peer in atom.peers:
                membership[peer].add(id(atom))
        else:
            for peer in (
                only_peers & atom.peers if len(only_peers) < len(atom.peers) else atom.peers & only_peers
            ):
                membership[peer].add(id(atom))
    # Identities named by exactly the same atoms decide alike: compute each such group once.
    groups: dict[frozenset[int], list[int]] = defaultdict(list)
    for peer, atoms in membership.items():
        groups[frozenset(atoms)].append(peer)

    result: dict[int, list[PolicyEntry]] = {}
    any_table = _table(rules, segments, any_atoms)

    def emit(peer: int, cells: list[Cell]) -> None:
        entries = []
        for proto, lo, hi, value in cells:
            assert value is not None
            entries.append(
                PolicyEntry(endpoint_id, direction, peer, proto, lo, hi, value[0], value[1], audit=value[2])
            )
        if entries:
            result[peer] = entries

    if only_peers is None:
        emit(IDENTITY_ANY, _encode(any_table, segments))
    for named_by, peers in groups.items():
        table = _table(rules, segments, any_atoms | named_by)
        delta: Table = {}
        for proto, values in table.items():
            row: list[Value] = []
            for value, base in zip(values, any_table[proto], strict=True):
                if value is None and base is not None:
                    raise CompileError(f"peer group {sorted(peers)[:3]} has no outcome where ANY has {base}")
                row.append(None if _same(value, base) else value)
            delta[proto] = row
        full_cells = _encode(table, segments)
        delta_cells = _encode(delta, segments)
        cells = full_cells if len(full_cells) < len(delta_cells) else delta_cells
        for peer in peers:
            emit(peer, cells)
    return result
