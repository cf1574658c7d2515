"""NetworkPolicy (networking.k8s.io/v1) as pure, validated values."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshagent.model.ip import IPAddress, IPNetwork
from meshagent.model.kernel_state import Protocol
from meshagent.model.selectors import LabelSelector


class PolicyType(enum.StrEnum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


@dataclass(frozen=True)
class IPBlock:
    """A CIDR of either family and its excepts (of the same family: the parser checks)."""

    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, net: IPNetwork) -> bool:
        """Whether the addresses an ipcache prefix `net` stands for are all in the block, outside its excepts.

        Meant for prefixes of the ipcache, where every except is a (more specific) prefix of its own: an
        except strictly inside `net` takes its addresses away from `net`, so only `net` inside an except
        disqualifies it.
        """
        if net.version != self.cidr.version:
            return False
        return net.subnet_of(self.cidr) and not any(net.subnet_of(exc) for exc in self.excepts)  # type: ignore[arg-type]

    def contains_address(self, address: IPAddress) -> bool:
        return address in self.cidr and not any(address in exc for exc in self.excepts)

    def describe(self) -> str:
        text = str(self.cidr)
        if self.excepts:
            text += " except " + ", ".join(str(e) for e in self.excepts)
        return text


@dataclass(frozen=True)
class PolicyPeer:
    """One element of `from`/`to`: selectors (either or both) or an ipBlock.

    Semantics (Kubernetes): podSelector alone = pods in the policy's namespace; namespaceSelector alone =
    all pods in the selected namespaces; both = selected pods in selected namespaces.
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def describe(self) -> str:
        if self.ip_block is not None:
            return f"ipBlock {self.ip_block.describe()}"
        parts = []
        if self.namespace_selector is not None:
            parts.append(f"namespaces [{self.namespace_selector.describe()}]")
        if self.pod_selector is not None:
            parts.append(f"pods [{self.pod_selector.describe()}]")
        return " and ".join(parts)


@dataclass(frozen=True)
class PolicyPort:
    """A port of a rule: a number (with optional endPort), a name, or none (all ports of the protocol)."""

    protocol: Protocol = Protocol.TCP
    port: int | None = None
    end_port: int | None = None
    name: str | None = None

    def describe(self) -> str:
        proto = self.protocol.name.lower()
        if self.name is not None:
            return f"{proto}/{self.name}"
        if self.port is None:
            return f"{proto}/*"
        if self.end_port is not None and self.end_port != self.port:
            return f"{proto}/{self.port}-{self.end_port}"
        return f"{proto}/{self.port}"


@dataclass(frozen=True)
class PolicyRule:
    """An ingress or egress rule. peers None = `from`/`to` omitted or empty: every peer, world included.
    ports empty = every port and protocol."""

    peers: tuple[PolicyPeer, ...] | None = None
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[PolicyType]
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()
    audit: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)
