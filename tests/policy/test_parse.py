"""Parsers: every NetworkPolicy / AdminNetworkPolicy feature, and a clear reason for each bad input."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
import yaml
from meshagent.model.admin_policy import AdminAction, AdminNetworkPolicy
from meshagent.model.cluster import ContainerPort, Namespace, Pod
from meshagent.model.errors import PolicyInputError
from meshagent.model.kernel_state import Protocol
from meshagent.model.netpol import IPBlock, NetworkPolicy, PolicyType
from meshagent.model.selectors import SelectorOperator
from meshagent.policy.parse import parse_object


def load(text: str) -> Any:
    return yaml.safe_load(text)


def netpol(spec: str, **meta: str) -> dict[str, Any]:
    obj = {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x", **meta}, "spec": load(spec)}
    return obj


def test_namespace_and_pod() -> None:
    ns = parse_object(
        load(
            "{kind: Namespace, metadata: {name: x, labels: {team: a}, "
            "annotations: {meshagent.io/audit: 'true'}}}"
        )
    )
    assert ns == Namespace("x", frozenset({("team", "a")}), audit=True)
    assert ns.label_dict() == {"team": "a", "kubernetes.io/metadata.name": "x"}
    pod = parse_object(
        load("""
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - ports:
    - {name: http, containerPort: 8080}
    - {containerPort: 9000}
    - {name: dns, containerPort: 53, protocol: UDP}
status: {podIP: 10.1.0.5}
""")
    )
    assert isinstance(pod, Pod)
    assert pod.ip == IPv4Address("10.1.0.5") and pod.node == "n1"
    assert pod.ports == (ContainerPort("http", 8080), ContainerPort("dns", 53, Protocol.UDP))
    assert pod.named_port("http", Protocol.TCP) == 8080
    assert pod.named_port("dns", Protocol.TCP) is None  # a named port matches name AND protocol


def test_network_policy_everything() -> None:
    policy = parse_object(
        netpol(
            """
podSelector:
  matchLabels: {app: web}
  matchExpressions:
  - {key: tier, operator: In, values: [fe, be]}
  - {key: canary, operator: NotIn, values: ["yes"]}
  - {key: team, operator: Exists}
  - {key: legacy, operator: DoesNotExist}
ingress:
- from:
  - podSelector: {matchLabels: {app: db}}
  - namespaceSelector: {matchLabels: {team: a}}
  - namespaceSelector: {}
    podSelector: {matchLabels: {app: api}}
  - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}
  ports:
  - {port: 80}
  - {port: http}
  - {protocol: UDP, port: 5000, endPort: 5010}
  - {protocol: SCTP}
- {}
egress:
- to: [{ipBlock: {cidr: 10.0.0.0/8}}]
""",
            annotations={"meshagent.io/audit": "true"},
        )
    )  # type: ignore[arg-type]
    assert isinstance(policy, NetworkPolicy)
    assert policy.audit
    assert policy.policy_types == {PolicyType.INGRESS, PolicyType.EGRESS}  # inferred: egress is non-empty
    ops = [r.operator for r in policy.pod_selector.match_expressions]
    assert ops == [
        SelectorOperator.IN,
        SelectorOperator.NOT_IN,
        SelectorOperator.EXISTS,
        SelectorOperator.DOES_NOT_EXIST,
    ]
    assert policy.pod_selector.matches({"app": "web", "tier": "fe", "team": "t"})
    assert not policy.pod_selector.matches({"app": "web", "tier": "fe", "team": "t", "legacy": "1"})
    assert not policy.pod_selector.matches({"app": "web", "tier": "fe", "team": "t", "canary": "yes"})
    rule = policy.ingress[0]
    assert rule.peers is not None and len(rule.peers) == 4
    assert rule.peers[0].namespace_selector is None and rule.peers[0].pod_selector is not None
    assert rule.peers[1].pod_selector is None and rule.peers[1].namespace_selector is not None
    assert rule.peers[2].pod_selector is not None and rule.peers[2].namespace_selector is not None
    assert rule.peers[3].ip_block == IPBlock(IPv4Network("192.168.0.0/16"), (IPv4Network("192.168.1.0/24"),))
    assert [p.describe() for p in rule.ports] == ["tcp/80", "tcp/http", "udp/5000-5010", "sctp/*"]
    assert policy.ingress[1].peers is None and policy.ingress[1].ports == ()  # empty rule: everything


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ("podSelector: {}", {PolicyType.INGRESS}),  # no rules at all: isolates ingress only
        ("{podSelector: {}, egress: []}", {PolicyType.INGRESS}),
        ("{podSelector: {}, egress: [{}]}", {PolicyType.INGRESS, PolicyType.EGRESS}),
        ("{podSelector: {}, policyTypes: [Egress]}", {PolicyType.EGRESS}),
        ("{podSelector: {}, policyTypes: [Ingress, Egress]}", {PolicyType.INGRESS, PolicyType.EGRESS}),
    ],
)
def test_policy_types_explicit_and_inferred(spec: str, types: set[PolicyType]) -> None:
    policy = parse_object(netpol(spec))
    assert isinstance(policy, NetworkPolicy)
    assert policy.policy_types == types


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}", "not a valid CIDR"),
        ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: banana}}]}]}", "not a valid CIDR"),
        ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.1}}]}]}", "no prefix length"),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.1.0/25]}}]}]}",
            "outside the cidr",
        ),
        ("{podSelector: {}, ingress: [{ports: [{endPort: 90}]}]}", "needs a numeric port"),
        ("{podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}", "below port 90"),
        ("{podSelector: {}, ingress: [{ports: [{port: http, endPort: 80}]}]}", "named port"),
        ("{podSelector: {}, ingress: [{ports: [{protocol: ICMP, port: 1}]}]}", "unknown protocol 'ICMP'"),
        ("{podSelector: {}, ingress: [{ports: [{port: 70000}]}]}", "1-65535"),
        ("{podSelector: {}, ingress: [{ports: [{port: Not_A_Name}]}]}", "valid port name"),
        ("{podSelector: {matchExpressions: [{key: a, operator: Like, values: [b]}]}}", "not one of In"),
        ("{podSelector: {matchExpressions: [{key: a, operator: In}]}}", "needs at least one value"),
        ("{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}}", "takes no values"),
        ("{podSelector: {matchLabels: {app: 1}}}", "must be a string"),
        ("{podSelector: {matchLabelz: {app: a}}}", "unknown selector fields"),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "cannot be combined",
        ),
        ("{podSelector: {}, ingress: [{from: [{}]}]}", "needs podSelector, namespaceSelector or ipBlock"),
        ("{podSelector: {}, policyTypes: [Sideways]}", "not Ingress or Egress"),
        ("{podSelector: {}, ingress: {from: []}}", "expected a list"),
    ],
)
def test_bad_network_policies_are_rejected_with_reason(spec: str, reason: str) -> None:
    with pytest.raises(PolicyInputError) as info:
        parse_object(netpol(spec))
    err = info.value
    assert reason in err.reason
    assert (err.kind, err.namespace, err.name) == ("NetworkPolicy", "x", "p")
    assert str(err).startswith("NetworkPolicy x/p: spec.")  # says where in the object


def test_ipv6_blocks_and_their_excepts_are_kept() -> None:
    policy = parse_object(
        netpol(
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 'fd00::/64', except: ['fd00::/96']}}]}]}"
        )
    )
    assert isinstance(policy, NetworkPolicy)
    peers = policy.ingress[0].peers
    assert peers is not None
    assert peers[0].ip_block == IPBlock(IPv6Network("fd00::/64"), (IPv6Network("fd00::/96"),))


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        ("{cidr: 'fd00::/64', except: [10.0.0.0/8]}", "not the address family of the cidr"),
        ("{cidr: 10.0.0.0/8, except: ['fd00::/96']}", "not the address family of the cidr"),
        ("{cidr: 'fd00::/64', except: ['fd01::/96']}", "outside the cidr"),
        ("{cidr: 'fd00::/129'}", "not a valid CIDR"),
    ],
)
def test_bad_ipv6_blocks_say_why(block: str, reason: str) -> None:
    with pytest.raises(PolicyInputError, match=reason):
        parse_object(netpol(f"{{podSelector: {{}}, ingress: [{{from: [{{ipBlock: {block}}}]}}]}}"))


ANP = """
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: cluster-baseline}
spec:
  priority: 10
  subject:
    pods:
      namespaceSelector: {matchLabels: {env: prod}}
      podSelector: {matchLabels: {app: web}}
  ingress:
  - name: deny-dev
    action: Deny
    from: [{namespaces: {matchLabels: {env: dev}}}]
  - name: pass-rest
    action: Pass
    from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}}]
    ports:
    - portNumber: {protocol: TCP, port: 80}
    - portRange: {protocol: UDP, start: 5000, end: 5100}
    - namedPort: http
  egress:
  - action: Allow
    to: [{networks: [10.0.0.0/8, 'fd00::/8']}]
"""


def test_admin_network_policy() -> None:
    policy = parse_object(load(ANP))
    assert isinstance(policy, AdminNetworkPolicy)
    assert policy.priority == 10
    assert policy.subject.pod_selector is not None
    assert [r.action for r in policy.ingress] == [AdminAction.DENY, AdminAction.PASS]
    assert [p.describe() for p in policy.ingress[1].ports] == ["tcp/80", "udp/5000-5100", "any/http"]
    assert policy.egress[0].peers[0].networks == (IPv4Network("10.0.0.0/8"), IPv6Network("fd00::/8"))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda s: s.update(priority=1001), "spec.priority"),
        (lambda s: s.pop("priority"), "spec.priority"),
        (lambda s: s["ingress"][0].update(action="Maybe"), "not Allow, Deny or Pass"),
        (lambda s: s["ingress"][0].update({"from": []}), "at least one peer"),
        (lambda s: s["subject"].update(namespaces={}), "exactly one of"),
        (lambda s: s["egress"][0].update(to=[{"nodes": {}}]), "not supported"),
        (lambda s: s["ingress"][0].update({"from": [{"networks": ["10.0.0.0/8"]}]}), "exactly one of"),
        (lambda s: s["ingress"][1]["ports"].append({"portRange": {"start": 9, "end": 8}}), "below start"),
        (lambda s: s["egress"][0].update(to=[{"networks": ["10.0.0.0/40"]}]), "not a valid CIDR"),
    ],
)
def test_bad_admin_policies_are_rejected_with_reason(edit: Any, reason: str) -> None:
    obj = load(ANP)
    edit(obj["spec"])
    with pytest.raises(PolicyInputError) as info:
        parse_object(obj)
    assert reason in str(info.value)
    assert info.value.kind == "AdminNetworkPolicy" and info.value.name == "cluster-baseline"


def test_other_kinds_are_ignored_and_garbage_rejected() -> None:
    assert parse_object({"kind": "Service", "metadata": {"name": "s"}}) is None
    with pytest.raises(PolicyInputError, match=r"metadata\.name"):
        parse_object({"kind": "Pod", "metadata": {}})
    with pytest.raises(PolicyInputError, match="expected an object"):
        parse_object(["not", "a", "dict"])  # type: ignore[arg-type]


def test_pod_addresses_of_both_families() -> None:
    def pod_with(status: str) -> Pod:
        parsed = parse_object(load(f"{{kind: Pod, metadata: {{name: a, namespace: x}}, status: {status}}}"))
        assert isinstance(parsed, Pod)
        return parsed

    dual = pod_with("{podIP: 10.1.0.5, podIPs: [{ip: 10.1.0.5}, {ip: 'fd00::5'}]}")
    assert (dual.ip, dual.ipv6) == (IPv4Address("10.1.0.5"), IPv6Address("fd00::5"))
    v6_first = pod_with("{podIP: 'fd00::6', podIPs: [{ip: 'fd00::6'}, {ip: 10.1.0.6}]}")
    assert (v6_first.ip, v6_first.ipv6) == (IPv4Address("10.1.0.6"), IPv6Address("fd00::6"))
    v6_only = pod_with("{podIP: 'fd00::7', podIPs: [{ip: 'fd00::7'}]}")
    assert (v6_only.ip, v6_only.ipv6) == (None, IPv6Address("fd00::7"))
    with pytest.raises(PolicyInputError, match=r"'not-an-ip' is not an IP address"):
        pod_with("{podIP: not-an-ip}")
