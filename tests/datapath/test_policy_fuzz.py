"""Hypothesis-generated NetworkPolicy manifests, valid and broken, through parse, compile and apply: no
crash, every rejection names its reason, and what the kernel holds after each apply is what a fresh
compile of the desired state encodes. 10000 examples go all the way through the kernel; a shorter run
stops after compiling, for machines without BPF privileges. MESHAGENT_FUZZ_EXAMPLES scales both."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.maps.policy import compile_entries
from meshagent.model.cluster import LocalEndpoint
from meshagent.model.errors import PolicyInputError
from meshagent.model.kernel_state import KernelState
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.parse import parse_namespace, parse_object, parse_pod

SCALE = float(os.environ.get("MESHAGENT_FUZZ_EXAMPLES", "1"))
COMPILE_EXAMPLES = int(2000 * SCALE)
KERNEL_EXAMPLES = int(10000 * SCALE)

NAMESPACES = [
    parse_namespace({"kind": "Namespace", "metadata": {"name": n, "labels": {"team": n}}})
    for n in ("web", "db")
]
PODS = [
    parse_pod(
        {
            "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": ns, "labels": {"app": app, "tier": tier}},
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"podIP": f"10.244.9.{10 + i}"},
        }
    )
    for i, (ns, app, tier) in enumerate(
        [("web", "a", "fe"), ("web", "b", "be"), ("db", "a", "be"), ("db", "c", "fe")]
    )
]
LOCAL = [(PODS[0].key, LocalEndpoint(endpoint_id=1, ifindex=9001)), (PODS[2].key, LocalEndpoint(2, 9002))]

# Values chosen to cover what parsers get wrong: right and wrong types, edges, near misses. Each field
# draws from the valid values, or (in a broken manifest) from valid and broken ones alike.


def _either(
    valid: st.SearchStrategy[Any], broken: st.SearchStrategy[Any], ok: bool
) -> st.SearchStrategy[Any]:
    return valid if ok else st.one_of(valid, broken)


def spec_strategy(ok: bool) -> st.SearchStrategy[Any]:
    ports = _either(
        st.one_of(st.integers(1, 65535), st.sampled_from(["http", "dns"])),
        st.one_of(
            st.integers(-2, 70000),
            st.sampled_from(["80", "", "Bad_Name!", "a" * 16]),
            st.none(),
            st.booleans(),
        ),
        ok,
    )
    protocols = _either(
        st.sampled_from(["TCP", "UDP", "SCTP"]), st.sampled_from(["ICMP", "tcp", "", None, 6]), ok
    )
    cidrs = _either(
        st.sampled_from(["10.0.0.0/8", "10.244.9.0/24", "10.244.9.11/32", "0.0.0.0/0", "10.244.9.12/31"]),
        st.sampled_from(["10.0.0.1", "300.1.1.1/8", "fd00::/64", "", 7]),
        ok,
    )
    label_keys = _either(st.sampled_from(["app", "tier", "team"]), st.sampled_from(["", "x/y", 5]), ok)
    label_values = _either(st.sampled_from(["a", "b", "c", "fe", "be", "web", "db"]), st.integers(0, 3), ok)
    expressions = st.one_of(
        st.fixed_dictionaries(
            {"key": label_keys, "operator": st.sampled_from(["In", "NotIn"])},
            optional={"values": _either(st.lists(label_values, min_size=1, max_size=3), st.just("a"), ok)},
        ),
        st.fixed_dictionaries(
            {
                "key": label_keys,
                "operator": _either(st.sampled_from(["Exists", "DoesNotExist"]), st.just("Bogus"), ok),
            }
        ),
    )
    selectors = _either(
        st.one_of(
            st.just({}),
            st.fixed_dictionaries(
                {},
                optional={
                    "matchLabels": st.dictionaries(label_keys, label_values, max_size=2),
                    "matchExpressions": st.lists(expressions, max_size=2),
                },
            ),
        ),
        st.sampled_from(["junk", None, 3, {"matchLabels": []}]),
        ok,
    )
    ip_blocks = st.fixed_dictionaries({"cidr": cidrs}, optional={"except": st.lists(cidrs, max_size=2)})
    peers = _either(
        st.one_of(
            st.fixed_dictionaries(
                {}, optional={"podSelector": selectors, "namespaceSelector": selectors}
            ).filter(bool),
            st.fixed_dictionaries({"ipBlock": ip_blocks}),
        ),
        st.sampled_from(["junk", None, {}]),
        ok,
    )
    port_entries = _either(
        st.fixed_dictionaries({}, optional={"protocol": protocols, "port": ports}),
        st.one_of(
            st.just("junk"),
            st.fixed_dictionaries({"port": st.integers(1, 100), "endPort": st.integers(-1, 70000)}),
        ),
        ok,
    )

    def rules(peer_key: str) -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries(
            {},
            optional={
                peer_key: _either(st.lists(peers, max_size=3), st.just("junk"), ok),
                "ports": st.lists(port_entries, max_size=3),
            },
        )

    return st.fixed_dictionaries(
        {"podSelector": selectors},
        optional={
            "policyTypes": st.lists(
                _either(st.sampled_from(["Ingress", "Egress"]), st.just("Bogus"), ok), max_size=2, unique=True
            ),
            "ingress": _either(st.lists(rules("from"), max_size=3), st.sampled_from([None, {}]), ok),
            "egress": _either(st.lists(rules("to"), max_size=3), st.none(), ok),
        },
    )


VALID_SPECS = spec_strategy(True)
MIXED_SPECS = spec_strategy(False)


@st.composite
def manifests(draw: st.DrawFn, index: int) -> dict[str, Any]:
    metadata: Any = {"name": f"np{index}", "namespace": draw(st.sampled_from(["web", "db"]))}
    if draw(st.integers(0, 9)) == 0:
        metadata = draw(st.sampled_from([{}, {"name": ""}, "junk"]))
    spec = draw(st.one_of(VALID_SPECS, VALID_SPECS, MIXED_SPECS, st.sampled_from([None, [], "junk"])))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata, "spec": spec}


policy_sets = st.integers(0, 3).flatmap(lambda n: st.tuples(*(manifests(i) for i in range(n))))


class Outcomes:
    """Manifests accepted and rejected over a run: a generator that made only one kind would test half
    of what it claims."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0

    def check_both_seen(self, examples: int) -> None:
        if examples >= 100:
            assert self.accepted > examples // 10 and self.rejected > examples // 10, vars(self)


def parse_and_compile(objs: tuple[dict[str, Any], ...], outcomes: Outcomes) -> KernelState:
    parsed = []
    for obj in objs:
        try:
            model = parse_object(obj)
        except PolicyInputError as err:
            assert err.reason and str(err), "a rejection says why"
            outcomes.rejected += 1
            continue
        assert model is not None
        outcomes.accepted += 1
        parsed.append(model)
    compiler = PolicyCompiler()
    compiler.load(namespaces=NAMESPACES, pods=PODS, policies=parsed, local=LOCAL)
    desired = compiler.state()
    endpoint_ids = {e.endpoint_id for e in desired.endpoints}
    assert {e.endpoint_id for e in desired.policy} <= endpoint_ids
    compile_entries(desired.policy)  # the encoding for the trie takes every entry
    return desired


def test_generated_policies_parse_and_compile() -> None:
    outcomes = Outcomes()

    @settings(max_examples=COMPILE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(objs=policy_sets)
    def check(objs: tuple[dict[str, Any], ...]) -> None:
        parse_and_compile(objs, outcomes)

    check()
    outcomes.check_both_seen(COMPILE_EXAMPLES)


@pytest.fixture(scope="module")
def fuzz_datapath() -> Iterator[Datapath]:
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-test-{uuid.uuid4().hex[:8]}"
    dp = Datapath(pin_dir=pin_dir, attach_endpoints=False)
    dp.load()
    try:
        yield dp
    finally:
        dp.apply(KernelState())
        dp.uninstall()
        subprocess.run(["rm", "-rf", str(pin_dir)], check=False)


@pytest.mark.kernel
def test_generated_policies_in_the_kernel_equal_a_fresh_compile(fuzz_datapath: Datapath) -> None:
    # Inner function: the datapath fixture lives for all examples, each apply a diff from the last.
    outcomes = Outcomes()

    @settings(max_examples=KERNEL_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(objs=policy_sets)
    def check(objs: tuple[dict[str, Any], ...]) -> None:
        desired = parse_and_compile(objs, outcomes)
        result = fuzz_datapath.apply(desired)
        assert result.ok, result.errors
        endpoints, ipcache, trie = fuzz_datapath.state()
        assert set(endpoints.values()) == set(desired.endpoints)
        assert ipcache == set(desired.ipcache)
        assert trie == compile_entries(desired.policy)

    check()
    outcomes.check_both_seen(KERNEL_EXAMPLES)
