"""`policy trace`: the verdict for one connection from the compiled state, with the reasons.

Each direction that a local endpoint enforces is read out of the compiled KernelState (the datapath
lookup, simulated) and explained by the reference evaluation (which rules were checked and why they did
or did not match). The two are compared: a disagreement is reported, never hidden.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import ip_address

from meshagent.model.kernel_state import Direction, Protocol, Verdict
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.evaluate import DirectionDecision, Peer, World, combine, evaluate_direction
from meshagent.policy.rules import RuleRef
from meshagent.policy.simulate import DatapathSimulator, SimulatedVerdict

logger = logging.getLogger(__name__)


class TraceError(ValueError):
    """A trace request that names something unknown."""


@dataclass(frozen=True)
class DirectionTrace:
    decision: DirectionDecision  # the semantics, with reasons
    compiled: SimulatedVerdict | None  # None: the endpoint is not local (not in the compiled state)
    compiled_rule: RuleRef | None

    @property
    def verdict(self) -> Verdict:
        return self.compiled.verdict if self.compiled is not None else self.decision.verdict

    @property
    def agrees(self) -> bool:
        return self.compiled is None or self.compiled.verdict == self.decision.verdict


@dataclass(frozen=True)
class Trace:
    source: Peer
    destination: Peer
    protocol: Protocol
    port: int
    directions: tuple[DirectionTrace, ...]

    @property
    def verdict(self) -> Verdict:
        return combine([d.verdict for d in self.directions])

    @property
    def agrees(self) -> bool:
        return all(d.agrees for d in self.directions)


def world_of(compiler: PolicyCompiler) -> World:
    return World(
        namespaces=compiler.namespaces,
        pods=compiler.pods,
        network_policies=compiler.network_policies,
        admin_policies=compiler.admin_policies,
        label_filter=compiler.label_filter,
        host_addresses=compiler.host_addresses,
    )


def resolve_pod(compiler: PolicyCompiler, ref: str) -> Peer:
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name:
        raise TraceError(f"{ref!r}: expected NAMESPACE/POD")
    pod = compiler.pod((namespace, name))
    if pod is None:
        raise TraceError(f"no pod {ref}")
    address = pod.ip or pod.ipv6
    if address is None:
        raise TraceError(f"pod {ref} has no address yet")
    return Peer(address, pod)


def resolve_ip(compiler: PolicyCompiler, text: str) -> Peer:
    """An IPv4 or IPv6 address: a pod's (either of its addresses), the node's, or any other."""
    try:
        ip = ip_address(text)
    except ValueError:
        raise TraceError(f"{text!r} is not an IP address") from None
    holder = world_of(compiler).pod_by_ip(ip)
    return Peer(ip, holder)  # an address that a pod holds is that pod, as the ipcache sees it


def trace(
    compiler: PolicyCompiler, *, source: Peer, destination: Peer, protocol: Protocol, port: int
) -> Trace:
    if source.pod is None and destination.pod is None:
        raise TraceError("at least one end must be a pod")
    world = world_of(compiler)
    sim = DatapathSimulator(compiler.state())
    directions: list[DirectionTrace] = []
    for endpoint, peer, direction in (
        (source, destination, Direction.EGRESS),
        (destination, source, Direction.INGRESS),
    ):
        if endpoint.pod is None:
            continue
        decision = evaluate_direction(
            world, endpoint=endpoint.pod, direction=direction, peer=peer, protocol=protocol, port=port
        )
        compiled: SimulatedVerdict | None = None
        rule: RuleRef | None = None
        entry = compiler.endpoint(endpoint.pod.key)
        if entry is not None:
            compiled = sim.verdict(
                endpoint_id=entry.endpoint_id, direction=direction, peer=peer.ip, protocol=protocol, port=port
            )
            rule = compiler.rules.lookup(compiled.rule_id)
        directions.append(DirectionTrace(decision, compiled, rule))
    result = Trace(source, destination, protocol, port, tuple(directions))
    if not result.agrees:
        logger.error("compiled state and policy semantics disagree for %s", result)
    return result
