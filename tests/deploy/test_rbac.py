"""The ClusterRole grants exactly the permissions the agent's Kubernetes code uses: learned by running the
real source (the one `meshagent run` builds) against a recording API server, not from a second list."""

from __future__ import annotations

import time

import pytest
from meshagent.sources.kinds import KINDS
from meshagent.sources.kube_events import ObjectRef
from meshagent.sources.node_annotation import NodeKeyPublisher
from meshagent.sources.source import open_desired_state
from meshagent.wireguard.keys import generate_key_pair
from meshagent.wireguard.peers import PUBLIC_KEY_ANNOTATION

from tests.deploy.api_recorder import ApiRecorder, Permission, permission_of
from tests.deploy.manifests import Obj, agent_manifests, one
from tests.waiting import wait_until


def granted(role: Obj) -> set[Permission]:
    out: set[Permission] = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: least privilege means naming each"
        out |= {
            Permission(group, resource, verb)
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
    return out


def used_by_the_agent() -> set[Permission]:
    """Start the agent's source against the recorder until every informer has listed and watched and the
    permissions asked for stop changing, then make it report a rejected object (which posts an Event)."""
    with ApiRecorder() as api:
        desired = open_desired_state(api_host=api.url, node="node-a")
        desired.start()
        try:
            assert wait_until(lambda: desired.source.ready, 15), "the source never synced"
            kinds = {(info.group, info.plural) for info in KINDS}
            assert wait_until(lambda: kinds <= {(p.api_group, p.resource) for p in api.permissions}, 15)
            seen, stable_since = api.permissions, time.monotonic()
            while time.monotonic() - stable_since < 1.0:  # watches re-open every 0.2 s: settle for 1 s
                time.sleep(0.05)
                if api.permissions != seen:
                    seen, stable_since = api.permissions, time.monotonic()
            before = api.permissions
            ref = ObjectRef(
                kind="NetworkPolicy", name="bad", namespace="shop", api_version="networking.k8s.io/v1"
            )
            desired.source.report_rejected(ref, "InvalidPolicy", "endPort without port")
            assert wait_until(lambda: api.permissions != before, 10), "no request for the rejected object"
            # With encryption on, the agent publishes its WireGuard public key on its own Node.
            publisher = NodeKeyPublisher(
                node="node-a", annotation=PUBLIC_KEY_ANNOTATION, kubeconfig=None, api_host=api.url
            )
            publisher.publish(generate_key_pair().public_key)
        finally:
            desired.stop()
        assert not api.unparsed, f"requests outside the resource API: {api.unparsed}"
        return api.permissions


def test_cluster_role_grants_exactly_what_the_code_uses() -> None:
    used = used_by_the_agent()
    role = one("ClusterRole")
    have = granted(role)
    assert have - used == set(), f"granted but never used: {sorted(have - used)}"
    assert used - have == set(), f"used but not granted: {sorted(used - have)}"
    # Every kind the source watches took part (the recorder saw each one).
    assert {(info.group, info.plural) for info in KINDS} <= {(p.api_group, p.resource) for p in used}


def test_the_role_is_bound_to_the_agent_service_account() -> None:
    manifests = agent_manifests()
    role, binding, account = (
        one("ClusterRole", manifests),
        one("ClusterRoleBinding", manifests),
        one("ServiceAccount", manifests),
    )
    daemonset = one("DaemonSet", manifests)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert daemonset["metadata"]["namespace"] == account["metadata"]["namespace"]
    assert pod.get("automountServiceAccountToken", True) is not False


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GET", "/api/v1/pods?limit=500", Permission("", "pods", "list")),
        ("GET", "/api/v1/namespaces?watch=true&resourceVersion=5", Permission("", "namespaces", "watch")),
        ("GET", "/api/v1/namespaces/shop", Permission("", "namespaces", "get")),
        ("GET", "/api/v1/namespaces/shop/pods/web", Permission("", "pods", "get")),
        ("POST", "/api/v1/namespaces/shop/events", Permission("", "events", "create")),
        (
            "GET",
            "/apis/discovery.k8s.io/v1/endpointslices?watch=1",
            Permission("discovery.k8s.io", "endpointslices", "watch"),
        ),
        (
            "PATCH",
            "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies/a",
            Permission("policy.networking.k8s.io", "adminnetworkpolicies", "patch"),
        ),
        ("DELETE", "/api/v1/namespaces/shop/pods", Permission("", "pods", "deletecollection")),
    ],
)
def test_requests_map_to_rbac_permissions(method: str, url: str, expected: Permission) -> None:
    assert permission_of(method, url) == expected


def test_a_path_outside_the_resource_api_is_refused() -> None:
    with pytest.raises(ValueError, match="not a resource path"):
        permission_of("GET", "/healthz")
