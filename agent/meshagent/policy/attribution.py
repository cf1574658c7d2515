"""Which policy a datapath verdict came from: rule id -> policy rule, default deny -> isolating policies.

For the observer (flows, metrics): a verdict event carries the endpoint id, the direction and the rule id
of the entry that decided; RULE_ID_NONE means no entry matched (a default verdict).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshagent.model.kernel_state import RULE_ID_NONE, Direction
from meshagent.model.netpol import PolicyType
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.rules import RuleKind, RuleRef


@dataclass(frozen=True)
class Attribution:
    rule: RuleRef | None  # the rule of the deciding entry, when one decided
    default: bool  # no entry matched: the endpoint's default (deny/audit when isolated, else allow)
    isolating: tuple[str, ...]  # "namespace/name" of the NetworkPolicies isolating this direction
    description: str


def attribute(
    compiler: PolicyCompiler, *, endpoint_id: int, direction: Direction, rule_id: int
) -> Attribution:
    key = compiler.pod_of_endpoint(endpoint_id)
    isolating: tuple[str, ...] = ()
    if key is not None:
        wanted = PolicyType.INGRESS if direction is Direction.INGRESS else PolicyType.EGRESS
        names = {
            (ns, name)
            for kind, ns, name in compiler.policies_selecting(key)
            if kind is RuleKind.NETWORK_POLICY
        }
        isolating = tuple(
            f"{np.namespace}/{np.name}"
            for np in sorted(compiler.network_policies, key=lambda p: p.key)
            if (np.namespace, np.name) in names and wanted in np.policy_types
        )
    if rule_id == RULE_ID_NONE:
        if isolating:
            text = f"default deny ({direction.name.lower()} isolated by {', '.join(isolating)})"
        else:
            text = f"default allow (no NetworkPolicy isolates {direction.name.lower()})"
        return Attribution(None, True, isolating, text)
    rule = compiler.rules.lookup(rule_id)
    if rule is None:
        # An event from before a policy was deleted, or from entries another agent run wrote.
        return Attribution(None, False, isolating, f"rule {rule_id} (no longer known)")
    return Attribution(rule, False, isolating, rule.describe())
