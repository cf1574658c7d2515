"""Rule ids: every policy entry carries one, and this table maps it back to the rule that produced it."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from meshagent.model.kernel_state import RULE_ID_NONE, Direction

_RULE_ID_MAX = 0x7FFF_FFFF


class RuleKind(enum.StrEnum):
    NETWORK_POLICY = "NetworkPolicy"
    ADMIN_NETWORK_POLICY = "AdminNetworkPolicy"


@dataclass(frozen=True, order=True)
class RuleRef:
    """Where a rule comes from. `index` is the rule's position in the policy's ingress or egress list."""

    kind: RuleKind
    namespace: str  # "" for cluster-scoped admin policies
    name: str
    index: int
    direction: Direction

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind.value} {where} {self.direction.name.lower()}[{self.index}]"


class RuleTable:
    """Derived rule ids (a hash of the reference, so they survive restarts), queryable both ways."""

    def __init__(self) -> None:
        self._by_id: dict[int, RuleRef] = {}
        self._by_ref: dict[RuleRef, int] = {}

    def id_for(self, ref: RuleRef) -> int:
        rule_id = self._by_ref.get(ref)
        if rule_id is not None:
            return rule_id
        text = f"{ref.kind.value}|{ref.namespace}|{ref.name}|{ref.index}|{ref.direction.name}"
        rule_id = 1 + int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % _RULE_ID_MAX
        while rule_id in self._by_id or rule_id == RULE_ID_NONE:  # collision: probe
            rule_id = 1 + rule_id % _RULE_ID_MAX
        self._by_id[rule_id] = ref
        self._by_ref[ref] = rule_id
        return rule_id

    def lookup(self, rule_id: int) -> RuleRef | None:
        return self._by_id.get(rule_id)

    def release_policy(self, kind: RuleKind, namespace: str, name: str) -> None:
        """Forget a deleted policy's rules (ids still in flight in events then resolve to None)."""
        for ref in [r for r in self._by_ref if (r.kind, r.namespace, r.name) == (kind, namespace, name)]:
            del self._by_id[self._by_ref.pop(ref)]

    def items(self) -> list[tuple[int, RuleRef]]:
        return sorted(self._by_id.items())
