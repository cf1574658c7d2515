"""What the datapath does with a KernelState, in Python: the lookup that the property tests and
`policy trace` use to read a verdict out of compiled entries.

Semantics (the contract with bpf/lib/policy.h; docs/policy.md): the peer's identity is the ipcache's
longest-prefix match (IDENTITY_WORLD when none); for the exact identity and for IDENTITY_ANY the most
specific matching entry is taken (protocol and port range > protocol, any port > any protocol); a DENY from
either wins over an ALLOW, an audited DENY passes as AUDITED; entries are looked up whether or not the
direction enforces; with no match an enforcing direction denies (or, with its audit flag, passes as
AUDITED) and a non-enforcing one allows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from meshagent.model.ip import IPAddress
from meshagent.model.kernel_state import (
    IDENTITY_ANY,
    IDENTITY_WORLD,
    RULE_ID_NONE,
    Action,
    Direction,
    EndpointEntry,
    KernelState,
    PolicyEntry,
    Protocol,
    Verdict,
    user_identity,
)


@dataclass(frozen=True)
class SimulatedVerdict:
    verdict: Verdict
    rule_id: int  # RULE_ID_NONE for a default verdict
    peer_identity: int
    default: bool  # no entry decided: the endpoint's default (or no enforcement) did


def _specificity(entry: PolicyEntry) -> tuple[int, int]:
    if entry.protocol == Protocol.ANY:
        return (0, 0)
    if entry.any_port:
        return (1, 0)
    return (2, -(entry.port_hi - entry.port_lo))


def _matches(entry: PolicyEntry, protocol: Protocol, port: int) -> bool:
    if entry.protocol not in (Protocol.ANY, protocol):
        return False
    return entry.any_port or entry.port_lo <= port <= entry.port_hi


class DatapathSimulator:
    def __init__(self, state: KernelState) -> None:
        self._endpoints: dict[int, EndpointEntry] = {e.endpoint_id: e for e in state.endpoints}
        self._entries: dict[tuple[int, Direction, int], list[PolicyEntry]] = defaultdict(list)
        for entry in state.policy:
            self._entries[(entry.endpoint_id, entry.direction, entry.peer_identity)].append(entry)
        # Longest prefix first, so the first containing prefix is the longest match.
        self._ipcache = sorted(state.ipcache, key=lambda e: -e.cidr.prefixlen)

    def identity_of(self, address: IPAddress) -> int:
        """The ipcache's longest match in the address's own family (two tries in the datapath)."""
        for entry in self._ipcache:
            if entry.cidr.version == address.version and address in entry.cidr:
                return entry.identity
        return IDENTITY_WORLD

    def _best(self, key: tuple[int, Direction, int], protocol: Protocol, port: int) -> PolicyEntry | None:
        candidates = [e for e in self._entries.get(key, ()) if _matches(e, protocol, port)]
        return max(candidates, key=_specificity, default=None)

    def verdict(
        self, *, endpoint_id: int, direction: Direction, peer: IPAddress, protocol: Protocol, port: int
    ) -> SimulatedVerdict:
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None:
            raise KeyError(f"no endpoint {endpoint_id} in the compiled state")
        peer_identity = self.identity_of(peer)
        shown = user_identity(peer_identity)  # a pod's IPv6 identity is marked for the policy map only
        enforce = endpoint.enforce_ingress if direction is Direction.INGRESS else endpoint.enforce_egress
        found = [
            e
            for e in (
                self._best((endpoint_id, direction, peer_identity), protocol, port),
                self._best((endpoint_id, direction, IDENTITY_ANY), protocol, port),
            )
            if e is not None
        ]
        for entry in found:
            if entry.action == Action.DENY and not entry.audit:
                return SimulatedVerdict(Verdict.DENIED, entry.rule_id, shown, default=False)
        for entry in found:
            if entry.action == Action.DENY:
                return SimulatedVerdict(Verdict.AUDITED, entry.rule_id, shown, default=False)
        for entry in found:
            return SimulatedVerdict(Verdict.ALLOWED, entry.rule_id, shown, default=False)
        if not enforce:
            return SimulatedVerdict(Verdict.ALLOWED, RULE_ID_NONE, shown, default=True)
        audit = endpoint.audit_ingress if direction is Direction.INGRESS else endpoint.audit_egress
        verdict = Verdict.AUDITED if audit else Verdict.DENIED
        return SimulatedVerdict(verdict, RULE_ID_NONE, shown, default=True)
