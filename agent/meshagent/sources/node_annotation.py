"""Publishing this node's WireGuard public key on its Node object, so that every other agent (all of
which watch Nodes) learns it. A merge patch of one annotation: nothing else of the Node is touched, and
only the agent's own Node is ever written (RBAC grants `patch` on nodes for exactly this)."""

from __future__ import annotations

import logging

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from meshagent.sources.kube_client import load_api_client

logger = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """The API server refused or could not be reached; the message says which."""


class NodeKeyPublisher:
    def __init__(self, *, node: str, annotation: str, kubeconfig: str | None, api_host: str | None) -> None:
        self.node = node
        self.annotation = annotation
        self._api = client.CoreV1Api(load_api_client(kubeconfig=kubeconfig, host=api_host))

    def publish(self, public_key: str) -> None:
        body = {"metadata": {"annotations": {self.annotation: public_key}}}
        try:
            # A merge patch: the client sends a dict body as strategic merge, same effect on annotations.
            self._api.patch_node(self.node, body, _request_timeout=10)
        except ApiException as err:
            raise PublishError(f"cannot annotate Node {self.node}: HTTP {err.status} {err.reason}") from err
        except HTTPError as err:
            raise PublishError(f"cannot annotate Node {self.node}: {err}") from err
        logger.info("published public key %s on Node %s", public_key, self.node)
