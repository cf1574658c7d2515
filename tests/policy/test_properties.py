"""Property tests: incremental == full recompute, and compiled entries == the policy semantics."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshagent.model.admin_policy import AdminNetworkPolicy
from meshagent.model.cluster import LocalEndpoint, Namespace, Pod
from meshagent.model.kernel_state import Direction, KernelState, Protocol
from meshagent.model.netpol import NetworkPolicy
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.diff import KernelDiff
from meshagent.policy.evaluate import Peer, World, evaluate_direction
from meshagent.policy.simulate import DatapathSimulator

from .strategies import (
    EXTERNAL_IPS,
    HOST_IP,
    HOST_IP6,
    NAMESPACES,
    POD_IPS,
    Cluster,
    admin_policies,
    clusters,
    namespaces,
    network_policies,
    pods,
)

# Modest by default to keep `make test` fast; MESHAGENT_POLICY_EXAMPLES=1000 for a deep run.
FAST = settings(
    max_examples=int(os.environ.get("MESHAGENT_POLICY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROBE_PORTS = (
    (Protocol.TCP, 80),
    (Protocol.TCP, 81),
    (Protocol.TCP, 100),
    (Protocol.UDP, 53),
    (Protocol.UDP, 80),
    (Protocol.TCP, 9090),
    (Protocol.SCTP, 81),
    (Protocol.ICMP, 0),
)


def full_compile(cluster: Cluster) -> PolicyCompiler:
    compiler = PolicyCompiler()
    compiler.load(
        namespaces=cluster.namespaces,
        pods=cluster.pods,
        policies=cluster.policies,
        local=cluster.local.items(),
    )
    compiler.set_host_addresses([HOST_IP, HOST_IP6])
    return compiler


def world_of(compiler: PolicyCompiler) -> World:
    return World(
        namespaces=compiler.namespaces,
        pods=compiler.pods,
        network_policies=compiler.network_policies,
        admin_policies=compiler.admin_policies,
        host_addresses=compiler.host_addresses,
    )


def check_against_semantics(compiler: PolicyCompiler) -> int:
    """Every (peer, local endpoint, direction, protocol, port): simulated datapath == reference."""
    state = compiler.state()
    sim = DatapathSimulator(state)
    world = world_of(compiler)
    peers = [Peer(ip, p) for p in compiler.pods.values() for ip in (p.ip, p.ipv6) if ip is not None]
    peers += [Peer(ip) for ip in EXTERNAL_IPS if world.pod_by_ip(ip) is None]
    checked = 0
    for key, local in compiler.local_endpoints.items():
        endpoint = compiler.pods.get(key)
        if endpoint is None or endpoint.ip is None:
            continue
        for peer in peers:
            if peer.pod is not None and peer.pod.key == key:
                continue  # a pod's traffic to itself never leaves it for the veth, where tc enforces
            for direction in Direction:
                for protocol, port in PROBE_PORTS:
                    expected = evaluate_direction(
                        world, endpoint=endpoint, direction=direction, peer=peer, protocol=protocol, port=port
                    )
                    got = sim.verdict(
                        endpoint_id=local.endpoint_id,
                        direction=direction,
                        peer=peer.ip,
                        protocol=protocol,
                        port=port,
                    )
                    assert got.verdict == expected.verdict, (
                        f"{direction.name} {key} peer {peer.describe()} {protocol.name}/{port}: "
                        f"compiled {got} but semantics say {expected.verdict.name} ({expected.reason}; "
                        f"{expected.deciding})"
                    )
                    checked += 1
    return checked


@FAST
@given(clusters())
def test_compiled_entries_agree_with_semantics(cluster: Cluster) -> None:
    compiler = full_compile(cluster)
    check_against_semantics(compiler)


# ---------------------------------------------------------------- change sequences


CHANGE_KINDS = ("pod", "relabel", "delpod", "ns", "delns", "np", "delnp", "anp", "delanp", "local")


@st.composite
def changes(draw: st.DrawFn, cluster: Cluster) -> list[tuple[str, object]]:
    ops: list[tuple[str, object]] = []
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(CHANGE_KINDS))
        if kind == "pod":
            # Now and then a pod without an address yet (scheduled, not started): no identity, no entry.
            ip = None if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(POD_IPS))
            ops.append(("pod", draw(pods(ip, f"n{i}"))))
        elif kind == "relabel" and cluster.pods:
            old = draw(st.sampled_from(cluster.pods))
            assert old.ip is not None
            ops.append(("pod", draw(pods(old.ip, old.name, old.namespace))))
        elif kind == "delpod" and cluster.pods:
            ops.append(("delpod", draw(st.sampled_from(cluster.pods)).key))
        elif kind == "ns":
            ops.append(("ns", draw(namespaces(draw(st.sampled_from(NAMESPACES))))))
        elif kind == "delns":
            ops.append(("delns", draw(st.sampled_from(NAMESPACES))))
        elif kind == "np":
            ops.append(("np", draw(network_policies(f"np{draw(st.integers(0, 4))}"))))
        elif kind == "delnp":
            ops.append(("delnp", (draw(st.sampled_from(NAMESPACES)), f"np{draw(st.integers(0, 4))}")))
        elif kind == "anp":
            ops.append(("anp", draw(admin_policies(f"anp{draw(st.integers(0, 2))}"))))
        elif kind == "delanp":
            ops.append(("delanp", f"anp{draw(st.integers(0, 2))}"))
        elif kind == "local" and cluster.pods:
            pod = draw(st.sampled_from(cluster.pods))
            if draw(st.booleans()):
                ops.append(("unlocal", pod.key))
            else:
                ops.append(("local", (pod.key, LocalEndpoint(50 + i, 500 + i))))
    return ops


def apply_change(compiler: PolicyCompiler, model: Cluster, op: tuple[str, object]) -> list[KernelDiff]:
    """Apply one change to the compiler and to the plain model the full recompute is built from."""
    kind, arg = op
    if kind == "pod":
        assert isinstance(arg, Pod)
        # Two pods on one IP are not a state a cluster converges to: the new pod takes the address.
        model.pods = [p for p in model.pods if p.key != arg.key and (arg.ip is None or p.ip != arg.ip)] + [
            arg
        ]
        diffs = [
            compiler.delete_pod(*stale.key)
            for stale in [
                p
                for p in compiler.pods.values()
                if arg.ip is not None and p.ip == arg.ip and p.key != arg.key
            ]
        ]
        return [*diffs, compiler.upsert_pod(arg)]
    if kind == "delpod":
        assert isinstance(arg, tuple)
        model.pods = [p for p in model.pods if p.key != arg]
        return [compiler.delete_pod(*arg)]
    if kind == "ns":
        assert isinstance(arg, Namespace)
        model.namespaces = [n for n in model.namespaces if n.name != arg.name] + [arg]
        return [compiler.upsert_namespace(arg)]
    if kind == "delns":
        assert isinstance(arg, str)
        model.namespaces = [n for n in model.namespaces if n.name != arg]
        return [compiler.delete_namespace(arg)]
    if kind in ("np", "anp"):
        assert isinstance(arg, NetworkPolicy | AdminNetworkPolicy)
        model.policies = [p for p in model.policies if not same_policy(p, arg)] + [arg]
        return [compiler.upsert_policy(arg)]
    if kind == "delnp":
        assert isinstance(arg, tuple)
        model.policies = [
            p for p in model.policies if not (isinstance(p, NetworkPolicy) and (p.namespace, p.name) == arg)
        ]
        return [compiler.delete_network_policy(*arg)]
    if kind == "delanp":
        assert isinstance(arg, str)
        model.policies = [
            p for p in model.policies if not (isinstance(p, AdminNetworkPolicy) and p.name == arg)
        ]
        return [compiler.delete_admin_policy(arg)]
    if kind == "local":
        assert isinstance(arg, tuple)
        key, endpoint = arg
        # Endpoint ids are unique per node: the new endpoint replaces whichever pod had that id.
        model.local = {k: v for k, v in model.local.items() if v.endpoint_id != endpoint.endpoint_id}
        model.local[key] = endpoint
        diffs = [
            compiler.remove_local_endpoint(*other)
            for other, ep in compiler.local_endpoints.items()
            if ep.endpoint_id == endpoint.endpoint_id and other != key
        ]
        return [*diffs, compiler.set_local_endpoint(key[0], key[1], endpoint)]
    assert kind == "unlocal" and isinstance(arg, tuple)
    model.local.pop(arg, None)
    return [compiler.remove_local_endpoint(*arg)]


def same_policy(a: NetworkPolicy | AdminNetworkPolicy, b: NetworkPolicy | AdminNetworkPolicy) -> bool:
    if isinstance(a, NetworkPolicy) and isinstance(b, NetworkPolicy):
        return (a.namespace, a.name) == (b.namespace, b.name)
    return isinstance(a, AdminNetworkPolicy) and isinstance(b, AdminNetworkPolicy) and a.name == b.name


def assert_same_state(incremental: KernelState, fresh: KernelState, op: tuple[str, object]) -> None:
    for part in ("endpoints", "ipcache", "policy"):
        got, want = getattr(incremental, part), getattr(fresh, part)
        assert got == want, (
            f"after {op[0]}: {part} differ; only incremental: {sorted(got - want)[:5]}, "
            f"only full: {sorted(want - got)[:5]}"
        )


@FAST
@given(st.data())
def test_incremental_equals_full_recompute(data: st.DataObject) -> None:
    cluster = data.draw(clusters())
    model = Cluster(list(cluster.namespaces), list(cluster.pods), list(cluster.policies), dict(cluster.local))
    compiler = full_compile(cluster)
    applied = compiler.state()
    for op in data.draw(changes(cluster)):
        for diff in apply_change(compiler, model, op):
            applied = diff.apply_to(applied)
        assert applied == compiler.state(), f"diffs after {op[0]} do not add up to the compiler's state"
        fresh = full_compile(model).state()
        assert_same_state(compiler.state(), fresh, op)
    check_against_semantics(compiler)
