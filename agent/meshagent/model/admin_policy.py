"""Admin rules following AdminNetworkPolicy (policy.networking.k8s.io/v1alpha1) as pure values.

Cluster scoped, ordered by `priority` (lower number first, 0..1000); each rule has an action Allow, Deny or
Pass (Pass hands the decision to the namespaces' NetworkPolicies).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshagent.model.ip import IPNetwork
from meshagent.model.kernel_state import Protocol
from meshagent.model.selectors import LabelSelector

MAX_ADMIN_PRIORITY = 1000


class AdminAction(enum.StrEnum):
    ALLOW = "Allow"
    DENY = "Deny"
    PASS = "Pass"


@dataclass(frozen=True)
class AdminSelector:
    """`subject`, or a peer: `namespaces: {selector}` or `pods: {namespaceSelector, podSelector}`;
    networks (egress peers only): a list of CIDRs."""

    namespace_selector: LabelSelector
    pod_selector: LabelSelector | None = None  # None: every pod in the selected namespaces
    networks: tuple[IPNetwork, ...] = ()

    def describe(self) -> str:
        if self.networks:
            return "networks " + ", ".join(str(n) for n in self.networks)
        text = f"namespaces [{self.namespace_selector.describe()}]"
        if self.pod_selector is not None:
            text += f" pods [{self.pod_selector.describe()}]"
        return text


@dataclass(frozen=True)
class AdminPort:
    """portNumber (start == end), portRange, or namedPort."""

    protocol: Protocol = Protocol.TCP
    start: int | None = None
    end: int | None = None
    name: str | None = None

    def describe(self) -> str:
        proto = self.protocol.name.lower()
        if self.name is not None:
            return f"{proto}/{self.name}"
        if self.start == self.end:
            return f"{proto}/{self.start}"
        return f"{proto}/{self.start}-{self.end}"


@dataclass(frozen=True)
class AdminRule:
    name: str
    action: AdminAction
    peers: tuple[AdminSelector, ...]
    ports: tuple[AdminPort, ...] = ()  # empty: all ports and protocols


@dataclass(frozen=True)
class AdminNetworkPolicy:
    name: str
    priority: int
    subject: AdminSelector
    ingress: tuple[AdminRule, ...] = ()
    egress: tuple[AdminRule, ...] = ()
    audit: bool = False
