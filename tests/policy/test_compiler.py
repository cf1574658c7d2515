"""Compiler scenarios: admin precedence, audit, ipBlock vs pod IPs, named ports, rule ids, incrementality."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address

import yaml
from meshagent.model.cluster import LocalEndpoint, Namespace, Pod
from meshagent.model.kernel_state import (
    IDENTITY_ANY,
    IDENTITY_WORLD,
    Direction,
    IPCacheEntry,
    PolicyEntry,
    Protocol,
    Verdict,
    family6_identity,
)
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.parse import parse_object
from meshagent.policy.rules import RuleKind
from meshagent.policy.simulate import DatapathSimulator

BASE = """
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
kind: Namespace
metadata: {name: y, labels: {team: b}}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {containers: [{ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: db}}
status: {podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: c, namespace: y, labels: {app: db}}
spec: {containers: [{ports: [{name: http, containerPort: 9000}]}]}
status: {podIP: 10.0.1.3}
"""


def compiler_with(*docs: str) -> PolicyCompiler:
    compiler = PolicyCompiler()
    objs = [parse_object(d) for text in (BASE, *docs) for d in yaml.safe_load_all(text)]
    compiler.load(
        namespaces=[o for o in objs if isinstance(o, Namespace)],
        pods=[o for o in objs if isinstance(o, Pod)],
        policies=[o for o in objs if o is not None and not isinstance(o, Namespace | Pod)],  # type: ignore[misc]
        local=[
            (("x", "a"), LocalEndpoint(1, 11)),
            (("x", "b"), LocalEndpoint(2, 12)),
            (("y", "c"), LocalEndpoint(3, 13)),
        ],
    )
    return compiler


def verdict(
    compiler: PolicyCompiler,
    ep: int,
    direction: Direction,
    peer: str,
    port: int,
    protocol: Protocol = Protocol.TCP,
) -> Verdict:
    sim = DatapathSimulator(compiler.state())
    return sim.verdict(
        endpoint_id=ep, direction=direction, peer=IPv4Address(peer), protocol=protocol, port=port
    ).verdict


ALLOW_DB_TO_WEB = """
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}], ports: [{port: http}]}]
"""


def test_named_port_resolves_on_the_destination_and_isolation_is_per_direction() -> None:
    c = compiler_with(ALLOW_DB_TO_WEB)
    assert verdict(c, 1, Direction.INGRESS, "10.0.0.2", 8080) is Verdict.ALLOWED  # http = 8080 on a
    assert verdict(c, 1, Direction.INGRESS, "10.0.1.3", 8080) is Verdict.ALLOWED
    assert verdict(c, 1, Direction.INGRESS, "10.0.0.2", 9000) is Verdict.DENIED
    assert verdict(c, 1, Direction.INGRESS, "8.8.8.8", 8080) is Verdict.DENIED
    assert verdict(c, 1, Direction.EGRESS, "8.8.8.8", 1) is Verdict.ALLOWED  # egress not isolated
    ep = c.endpoint(("x", "a"))
    assert ep is not None and ep.enforce_ingress and not ep.enforce_egress
    assert verdict(c, 2, Direction.INGRESS, "8.8.8.8", 1) is Verdict.ALLOWED  # b is not selected


def test_admin_deny_beats_network_policy_allow_and_pass_delegates() -> None:
    anp = """
kind: AdminNetworkPolicy
metadata: {name: guard}
spec:
  priority: 5
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - {action: Pass, from: [{namespaces: {matchLabels: {team: a}}}]}
  - {action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {protocol: TCP, port: 8080}}]}
  - {action: Allow, from: [{namespaces: {matchLabels: {team: b}}}]}
"""
    c = compiler_with(ALLOW_DB_TO_WEB, anp)
    assert verdict(c, 1, Direction.INGRESS, "10.0.0.2", 8080) is Verdict.ALLOWED  # Pass -> NP allows
    assert verdict(c, 1, Direction.INGRESS, "10.0.1.3", 8080) is Verdict.DENIED  # Deny before NP
    assert verdict(c, 1, Direction.INGRESS, "10.0.1.3", 22) is Verdict.ALLOWED  # admin Allow over NP
    # b has no NetworkPolicy: admin rules alone enforce, everything else stays allowed.
    assert verdict(c, 2, Direction.INGRESS, "10.0.1.3", 8080) is Verdict.DENIED
    assert verdict(c, 2, Direction.INGRESS, "8.8.8.8", 8080) is Verdict.ALLOWED
    higher = (
        anp.replace("name: guard", "name: a-first")
        .replace("priority: 5", "priority: 1")
        .replace("action: Pass", "action: Allow")
    )
    c = compiler_with(ALLOW_DB_TO_WEB, anp, higher)
    assert verdict(c, 1, Direction.INGRESS, "10.0.0.2", 7) is Verdict.ALLOWED  # priority 1 Allow first


def test_audit_modes() -> None:
    audited = ALLOW_DB_TO_WEB.replace(
        "namespace: x}", "namespace: x, annotations: {meshagent.io/audit: 'true'}}"
    )
    c = compiler_with(audited)
    assert verdict(c, 1, Direction.INGRESS, "8.8.8.8", 8080) is Verdict.AUDITED
    assert verdict(c, 1, Direction.INGRESS, "10.0.0.2", 8080) is Verdict.ALLOWED
    anp = """
kind: AdminNetworkPolicy
metadata: {name: trial, annotations: {meshagent.io/audit: "true"}}
spec:
  priority: 1
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: [8.8.8.0/24]}]}]
"""
    c = compiler_with(anp)
    assert verdict(c, 2, Direction.EGRESS, "8.8.8.8", 53, Protocol.UDP) is Verdict.AUDITED
    assert verdict(c, 2, Direction.EGRESS, "9.9.9.9", 53, Protocol.UDP) is Verdict.ALLOWED


def test_ip_block_matches_pod_ips_except_and_longest_prefix() -> None:
    policy = """
kind: NetworkPolicy
metadata: {name: egress, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}]
---
kind: NetworkPolicy
metadata: {name: narrow, namespace: y}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.2.0/24}}]}]
"""
    c = compiler_with(policy)
    assert verdict(c, 1, Direction.EGRESS, "10.0.0.2", 80) is Verdict.ALLOWED  # pod b: its /32 identity
    assert verdict(c, 1, Direction.EGRESS, "10.0.1.3", 80) is Verdict.DENIED  # pod c: in the except
    assert verdict(c, 1, Direction.EGRESS, "10.0.1.99", 80) is Verdict.DENIED  # except prefix
    # 10.0.2.0/24 is another policy's prefix, more specific: still inside 10.0.0.0/16, still allowed.
    assert verdict(c, 1, Direction.EGRESS, "10.0.2.9", 80) is Verdict.ALLOWED
    assert verdict(c, 1, Direction.EGRESS, "10.1.0.1", 80) is Verdict.DENIED


def test_rule_ids_map_back_and_a_default_deny_is_named() -> None:
    c = compiler_with(ALLOW_DB_TO_WEB)
    sim = DatapathSimulator(c.state())
    got = sim.verdict(
        endpoint_id=1,
        direction=Direction.INGRESS,
        peer=IPv4Address("10.0.0.2"),
        protocol=Protocol.TCP,
        port=8080,
    )
    ref = c.rules.lookup(got.rule_id)
    assert ref is not None and (ref.kind, ref.namespace, ref.name, ref.index) == (
        RuleKind.NETWORK_POLICY,
        "x",
        "web",
        0,
    )
    denied = sim.verdict(
        endpoint_id=1,
        direction=Direction.INGRESS,
        peer=IPv4Address("10.0.0.2"),
        protocol=Protocol.TCP,
        port=1,
    )
    assert denied.default and denied.verdict is Verdict.DENIED
    assert c.policies_selecting(("x", "a")) == [(RuleKind.NETWORK_POLICY, "x", "web")]


def test_a_change_touches_only_the_entries_it_affects() -> None:
    c = compiler_with(ALLOW_DB_TO_WEB)
    before = c.state()
    # A pod nobody's policy names, in another namespace: one ipcache entry, no policy entry.
    diff = c.upsert_pod(Pod("y", "new", frozenset({("app", "other")}), IPv4Address("10.0.1.50")))
    assert diff.upsert_policy == frozenset() and diff.delete_policy == frozenset()
    assert [e.cidr.exploded for e in diff.upsert_ipcache] == ["10.0.1.50/32"]
    # Relabel c out of app=db: only the endpoint whose rules name db pods (a) changes.
    c_pod = c.pods[("y", "c")]
    diff = c.upsert_pod(Pod("y", "c", frozenset({("app", "cache")}), c_pod.ip, ports=c_pod.ports))
    touched = {e.endpoint_id for e in diff.upsert_policy | diff.delete_policy}
    assert touched == {1}  # only a's entries name c's identity
    assert all(e.peer_identity != IDENTITY_ANY for e in diff.upsert_policy | diff.delete_policy)
    assert diff.apply_to(before) != before


def test_attribution_names_the_rule_or_the_isolating_policies() -> None:
    from meshagent.policy.attribution import attribute

    c = compiler_with(ALLOW_DB_TO_WEB)
    sim = DatapathSimulator(c.state())
    got = sim.verdict(
        endpoint_id=1,
        direction=Direction.INGRESS,
        peer=IPv4Address("10.0.0.2"),
        protocol=Protocol.TCP,
        port=8080,
    )
    found = attribute(c, endpoint_id=1, direction=Direction.INGRESS, rule_id=got.rule_id)
    assert found.description == "NetworkPolicy x/web ingress[0]" and not found.default
    denied = attribute(c, endpoint_id=1, direction=Direction.INGRESS, rule_id=0)
    assert denied.default and denied.isolating == ("x/web",)
    assert denied.description == "default deny (ingress isolated by x/web)"
    assert attribute(c, endpoint_id=1, direction=Direction.EGRESS, rule_id=0).description.startswith(
        "default allow"
    )
    assert attribute(c, endpoint_id=1, direction=Direction.INGRESS, rule_id=12345).rule is None


def test_an_ipv6_only_pod_is_enforced_with_its_own_identity_and_rules() -> None:
    v6_pod = """
kind: Pod
metadata: {name: six, namespace: x, labels: {app: six}}
status: {podIP: 'fd00::6', podIPs: [{ip: 'fd00::6'}]}
"""
    allow_web = """
kind: NetworkPolicy
metadata: {name: six-from-web, namespace: x}
spec:
  podSelector: {matchLabels: {app: six}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 80}]}]
"""
    compiler = compiler_with(v6_pod)
    compiler.set_local_endpoint("x", "six", LocalEndpoint(4, 14))
    endpoint = compiler.endpoint(("x", "six"))
    assert endpoint is not None and not endpoint.enforce_ingress
    compiler.upsert_policy(parse_object(yaml.safe_load(allow_web)))  # type: ignore[arg-type]
    endpoint = compiler.endpoint(("x", "six"))
    assert endpoint is not None
    six_identity = compiler.identity_of(("x", "six"))
    assert six_identity is not None and six_identity != IDENTITY_WORLD
    # Its own identity and address; no IPv4 address, so every IPv4 source it uses is spoofed.
    assert (endpoint.ipv4, endpoint.ipv6, endpoint.identity) == (
        IPv4Address(0),
        IPv6Address("fd00::6"),
        six_identity,
    )
    assert endpoint.enforce_ingress and not endpoint.enforce_egress
    # Its IPv6 address carries its identity marked for the policy map.
    assert (
        IPCacheEntry(IPv6Network("fd00::6/128"), family6_identity(six_identity)) in compiler.state().ipcache
    )
    sim = DatapathSimulator(compiler.state())
    allowed = sim.verdict(
        endpoint_id=4,
        direction=Direction.INGRESS,
        peer=IPv4Address("10.0.0.1"),
        protocol=Protocol.TCP,
        port=80,
    )
    other = sim.verdict(
        endpoint_id=4,
        direction=Direction.INGRESS,
        peer=IPv4Address("10.0.0.2"),
        protocol=Protocol.TCP,
        port=80,
    )
    assert (allowed.verdict, other.verdict) == (Verdict.ALLOWED, Verdict.DENIED)
    # The incremental result is the full compile's.
    full = compiler_with(v6_pod, allow_web)
    full.set_local_endpoint("x", "six", LocalEndpoint(4, 14))
    assert full.state() == compiler.state()
    compiler.delete_network_policy("x", "six-from-web")
    endpoint = compiler.endpoint(("x", "six"))
    assert endpoint is not None and not endpoint.enforce_ingress


DUAL = """
kind: Pod
metadata: {name: d, namespace: y, labels: {app: dual}}
status: {podIP: 10.0.2.4, podIPs: [{ip: 10.0.2.4}, {ip: 'fd00::4'}]}
"""


def _ingress_from_blocks(*cidrs: str) -> str:
    blocks = ", ".join(f"{{ipBlock: {{cidr: '{c}'}}}}" for c in cidrs)
    return f"""
kind: NetworkPolicy
metadata: {{name: blocks, namespace: x}}
spec: {{podSelector: {{matchLabels: {{app: web}}}}, policyTypes: [Ingress], ingress: [{{from: [{blocks}]}}]}}
"""


def _ingress_verdict(compiler: PolicyCompiler, peer: str) -> Verdict:
    sim = DatapathSimulator(compiler.state())
    return sim.verdict(
        endpoint_id=1, direction=Direction.INGRESS, peer=ip_address(peer), protocol=Protocol.TCP, port=80
    ).verdict


def test_ipv6_ip_blocks_with_excepts_match_ipv6_addresses() -> None:
    policy = """
kind: NetworkPolicy
metadata: {name: v6-block, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress: [{from: [{ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}}]}]
"""
    compiler = compiler_with(policy)
    assert _ingress_verdict(compiler, "2001:db8:2::1") == Verdict.ALLOWED
    assert _ingress_verdict(compiler, "2001:db8:1::1") == Verdict.DENIED
    assert _ingress_verdict(compiler, "2001:db9::1") == Verdict.DENIED
    # An IPv4 address never falls in an IPv6 block (nor in the ipcache's IPv6 prefixes).
    assert _ingress_verdict(compiler, "32.1.13.184") == Verdict.DENIED
    cidrs = {e.cidr for e in compiler.state().ipcache}
    assert {IPv6Network("2001:db8::/32"), IPv6Network("2001:db8:1::/48")} <= cidrs


def test_a_dual_stack_pods_ip_blocks_are_judged_per_family() -> None:
    # An IPv4 block takes the pod's IPv4 traffic and nothing of its IPv6 (Kubernetes matches addresses).
    v4_only = compiler_with(DUAL, _ingress_from_blocks("10.0.2.0/24"))
    assert _ingress_verdict(v4_only, "10.0.2.4") == Verdict.ALLOWED
    assert _ingress_verdict(v4_only, "fd00::4") == Verdict.DENIED
    assert _ingress_verdict(v4_only, "10.0.2.99") == Verdict.ALLOWED  # an address that is no pod's
    # An IPv6 block: the other way round.
    v6_only = compiler_with(DUAL, _ingress_from_blocks("fd00::/64"))
    assert _ingress_verdict(v6_only, "10.0.2.4") == Verdict.DENIED
    assert _ingress_verdict(v6_only, "fd00::4") == Verdict.ALLOWED
    # Blocks of both families in a rule take it on both.
    both = compiler_with(DUAL, _ingress_from_blocks("10.0.2.0/24", "fd00::/64"))
    assert _ingress_verdict(both, "10.0.2.4") == Verdict.ALLOWED
    assert _ingress_verdict(both, "fd00::4") == Verdict.ALLOWED
    # Incrementally: the IPv6 address arrives later, then goes; the IPv4 verdict never moves.
    incremental = compiler_with(_ingress_from_blocks("fd00::/64"))
    single = DUAL.replace("podIPs: [{ip: 10.0.2.4}, {ip: 'fd00::4'}]", "podIPs: [{ip: 10.0.2.4}]")
    incremental.upsert_pod(parse_object(yaml.safe_load(single)))  # type: ignore[arg-type]
    assert _ingress_verdict(incremental, "10.0.2.4") == Verdict.DENIED
    incremental.upsert_pod(parse_object(yaml.safe_load(DUAL)))  # type: ignore[arg-type]
    assert _ingress_verdict(incremental, "fd00::4") == Verdict.ALLOWED
    assert incremental.state() == v6_only.state()
    incremental.upsert_pod(parse_object(yaml.safe_load(single)))  # type: ignore[arg-type]
    assert incremental.state() == compiler_with(single, _ingress_from_blocks("fd00::/64")).state()


DUAL_TWIN = """
kind: Pod
metadata: {name: e, namespace: y, labels: {app: dual}}
status: {podIP: 10.0.3.5, podIPs: [{ip: 10.0.3.5}, {ip: 'fd00:1::5'}]}
"""


def test_a_block_holding_some_pods_of_an_identity_in_its_family_takes_none_of_them() -> None:
    # d and e share an identity; 10.0.2.0/24 holds d's IPv4 address, not e's: one identity cannot tell
    # them apart, so the block takes neither (fail closed), in IPv4; IPv6 is untouched by an IPv4 block.
    partial = compiler_with(DUAL, DUAL_TWIN, _ingress_from_blocks("10.0.2.0/24", "fd00::/16"))
    assert _ingress_verdict(partial, "10.0.2.4") == Verdict.DENIED
    assert _ingress_verdict(partial, "10.0.3.5") == Verdict.DENIED
    assert _ingress_verdict(partial, "fd00::4") == Verdict.ALLOWED
    assert _ingress_verdict(partial, "fd00:1::5") == Verdict.ALLOWED


def _peer_entries(compiler: PolicyCompiler, peer: int) -> list[PolicyEntry]:
    return [e for e in compiler.state().policy if e.endpoint_id == 1 and e.peer_identity == peer]


SELECT_DUAL = """
kind: NetworkPolicy
metadata: {name: from-dual, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: dual}}}], ports: [{port: 80}]}]
"""


def test_a_selector_gives_a_pod_identity_and_its_ipv6_identity_the_same_entries() -> None:
    compiler = compiler_with(DUAL, SELECT_DUAL)
    ident = compiler.identity_of(("y", "d"))
    assert ident is not None
    plain = _peer_entries(compiler, ident)
    marked = _peer_entries(compiler, family6_identity(ident))
    assert plain and [(e.protocol, e.port_lo, e.port_hi, e.action, e.rule_id) for e in plain] == [
        (e.protocol, e.port_lo, e.port_hi, e.action, e.rule_id) for e in marked
    ]
    assert _ingress_verdict(compiler, "10.0.2.4") == Verdict.ALLOWED
    assert _ingress_verdict(compiler, "fd00::4") == Verdict.ALLOWED
    # An IPv4-only identity gets no marked entries: IPv4 clusters keep their policy map size.
    single = DUAL.replace("podIPs: [{ip: 10.0.2.4}, {ip: 'fd00::4'}]", "podIPs: [{ip: 10.0.2.4}]")
    incremental = compiler_with(single, SELECT_DUAL)
    assert _peer_entries(incremental, ident) and not _peer_entries(incremental, family6_identity(ident))
    # The pod gains its IPv6 address: the marked entries follow, as a full compile makes them.
    incremental.upsert_pod(parse_object(yaml.safe_load(DUAL)))  # type: ignore[arg-type]
    assert incremental.state() == compiler.state()
    incremental.upsert_pod(parse_object(yaml.safe_load(single)))  # type: ignore[arg-type]
    assert not _peer_entries(incremental, family6_identity(ident))
    assert incremental.state() == compiler_with(single, SELECT_DUAL).state()


def test_the_simulator_shows_the_pods_identity_for_its_ipv6_address() -> None:
    compiler = compiler_with(DUAL, SELECT_DUAL)
    sim = DatapathSimulator(compiler.state())
    shown = sim.verdict(
        endpoint_id=1, direction=Direction.INGRESS, peer=ip_address("fd00::4"), protocol=Protocol.TCP, port=80
    )
    assert shown.verdict == Verdict.ALLOWED and shown.peer_identity == compiler.identity_of(("y", "d"))
