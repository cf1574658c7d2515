"""The agents' own pods, read from the Kubernetes API: where `meshagent relay` finds each node's flow API.

One list call per refresh (the relay asks every few seconds): an agent pod counts once it runs and has
an address; with hostNetwork, as the DaemonSet runs, that address is its node's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client


@dataclass(frozen=True, order=True)
class AgentPod:
    node: str
    address: str


def list_agent_pods(
    api: client.ApiClient, namespace: str, selector: str, *, timeout_s: float = 10.0
) -> list[AgentPod]:
    """The running agent pods in `namespace` matching the label `selector`, by node."""
    core = client.CoreV1Api(api)
    # Raw JSON, as the informers read it (kube_client.py): no model types.
    answer: Any = core.list_namespaced_pod(
        namespace, label_selector=selector, _preload_content=False, _request_timeout=timeout_s
    )
    try:
        body = json.loads(answer.data)
    finally:
        answer.release_conn()
    found = []
    for item in body.get("items") or []:
        meta, spec, status = item.get("metadata") or {}, item.get("spec") or {}, item.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") != "Running":
            continue
        address, node = status.get("podIP"), spec.get("nodeName")
        if address and node:
            found.append(AgentPod(node=str(node), address=str(address)))
    return sorted(found)
