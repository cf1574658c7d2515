"""Object events into the compiler: rejections are reported and lose nothing."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from meshagent.model.cluster import LocalEndpoint
from meshagent.model.errors import PolicyInputError
from meshagent.model.kernel_state import Direction, Protocol, Verdict
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.ingest import PolicyIngest
from meshagent.policy.simulate import DatapathSimulator


def pod(name: str, ip: str, app: str, phase: str = "Running") -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "x", "labels": {"app": app}},
        "status": {"podIP": ip, "phase": phase},
    }


def policy(peer_app: str, *, cidr: str = "10.0.0.0/8", except_: str = "10.1.0.0/16") -> dict[str, Any]:
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": peer_app}}}]},
                {"from": [{"ipBlock": {"cidr": cidr, "except": [except_]}}], "ports": [{"port": 443}]},
            ],
        },
    }


def verdict(compiler: PolicyCompiler, peer: str, port: int = 80) -> Verdict:
    sim = DatapathSimulator(compiler.state())
    return sim.verdict(
        endpoint_id=1, direction=Direction.INGRESS, peer=IPv4Address(peer), protocol=Protocol.TCP, port=port
    ).verdict


def test_bad_update_keeps_the_last_good_version_and_is_reported() -> None:
    compiler = PolicyCompiler()
    seen: list[PolicyInputError] = []
    ingest = PolicyIngest(compiler, on_rejection=seen.append)
    ingest.handle("ADDED", {"kind": "Namespace", "metadata": {"name": "x"}})
    ingest.handle("ADDED", pod("web", "10.0.0.1", "web"))
    ingest.handle("ADDED", pod("db", "10.0.0.2", "db"))
    compiler.set_local_endpoint("x", "web", LocalEndpoint(1, 11))
    ingest.handle("ADDED", policy("db"))
    assert verdict(compiler, "10.0.0.2") is Verdict.ALLOWED

    diff = ingest.handle("MODIFIED", policy("db", except_="192.168.0.0/16"))  # except outside the cidr
    assert diff.is_empty
    assert verdict(compiler, "10.0.0.2") is Verdict.ALLOWED  # the last good version is still in force
    assert [e.reason for e in seen] == [
        "spec.ingress[1].from[0].ipBlock.except[0]: 192.168.0.0/16 is outside the cidr 10.0.0.0/8"
    ]
    assert set(ingest.rejections()) == {("NetworkPolicy", "x", "web")}
    assert ingest.rejected_total["NetworkPolicy"] == 1

    ingest.handle("MODIFIED", policy("other"))  # fixed: the rejection clears, the new version applies
    assert ingest.rejections() == {}
    assert verdict(compiler, "10.0.0.2") is Verdict.DENIED
    ingest.handle("DELETED", policy("other"))
    assert verdict(compiler, "10.0.0.2") is Verdict.ALLOWED


def test_finished_pods_leave_and_unknown_kinds_are_ignored() -> None:
    compiler = PolicyCompiler()
    ingest = PolicyIngest(compiler)
    ingest.handle("ADDED", pod("web", "10.0.0.1", "web"))
    compiler.set_local_endpoint("x", "web", LocalEndpoint(1, 11))
    ingest.handle("ADDED", pod("job", "10.0.0.3", "db"))
    assert any(e.cidr.exploded == "10.0.0.3/32" for e in compiler.state().ipcache)
    ingest.handle("MODIFIED", pod("job", "10.0.0.3", "db", phase="Succeeded"))
    assert not any(e.cidr.exploded == "10.0.0.3/32" for e in compiler.state().ipcache)
    assert ingest.handle("ADDED", {"kind": "Service", "metadata": {"name": "s", "namespace": "x"}}).is_empty
