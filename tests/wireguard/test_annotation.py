"""The public key reaches the agent's Node object through the real client against the API emulator, and
from there every other agent's peer plan; the API's refusal is a clear error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from meshagent.sources.node_annotation import NodeKeyPublisher, PublishError
from meshagent.wireguard.keys import generate_key_pair
from meshagent.wireguard.peers import PUBLIC_KEY_ANNOTATION, plan_peers

from tests.sources.k8s_emulator import KubeEmulator


def node(name: str, address: str) -> dict[str, object]:
    return {
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": "10.244.2.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }


@pytest.fixture
def api() -> Iterator[KubeEmulator]:
    emulator = KubeEmulator()
    emulator.start()
    try:
        emulator.apply(node("node-1", "192.168.254.11"))
        emulator.apply(node("node-2", "192.168.254.12"))
        yield emulator
    finally:
        emulator.stop()


def publisher(api: KubeEmulator, name: str) -> NodeKeyPublisher:
    return NodeKeyPublisher(node=name, annotation=PUBLIC_KEY_ANNOTATION, kubeconfig=None, api_host=api.url)


def test_published_key_is_on_the_node_and_nothing_else_changes(api: KubeEmulator) -> None:
    pair = generate_key_pair()
    before = api.get("Node", "", "node-2")
    assert before is not None
    publisher(api, "node-2").publish(pair.public_key)
    after = api.get("Node", "", "node-2")
    assert after is not None
    assert after["metadata"]["annotations"] == {PUBLIC_KEY_ANNOTATION: pair.public_key}
    assert after["metadata"]["labels"] == before["metadata"]["labels"]
    assert after["status"] == before["status"]
    untouched = api.get("Node", "", "node-1")
    assert untouched is not None and "annotations" not in untouched["metadata"]
    # What another node's agent makes of it: a peer at node-2's address with that key.
    own = generate_key_pair().public_key
    plan = plan_peers([untouched, after], [], local_node="node-1", local_public_key=own)
    assert [(p.node, str(p.endpoint)) for p in plan.peers.values()] == [("node-2", "192.168.254.12")]
    assert pair.public_key in plan.peers


def test_rotation_replaces_the_annotation(api: KubeEmulator) -> None:
    first, second = generate_key_pair(), generate_key_pair()
    publisher(api, "node-2").publish(first.public_key)
    publisher(api, "node-2").publish(second.public_key)
    after = api.get("Node", "", "node-2")
    assert after is not None
    assert after["metadata"]["annotations"][PUBLIC_KEY_ANNOTATION] == second.public_key


def test_missing_node_is_a_clear_error(api: KubeEmulator) -> None:
    with pytest.raises(PublishError, match=r"cannot annotate Node node-9: HTTP 404"):
        publisher(api, "node-9").publish(generate_key_pair().public_key)


def test_unreachable_api_is_a_clear_error(api: KubeEmulator) -> None:
    api.fail_requests = True
    with pytest.raises(PublishError, match=r"HTTP 500"):
        publisher(api, "node-2").publish(generate_key_pair().public_key)
