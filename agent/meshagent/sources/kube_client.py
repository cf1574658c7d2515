"""Connecting to the API server and listing/watching one kind with the official client.

Everything comes back as raw dicts in the API's JSON shape: lists are read with
`_preload_content=False` and parsed as JSON, watches see no model type (see _untyped). The
client's typed models would turn camelCase into snake_case (and drop fields of
resources it has no model for, such as the admin policy CRD), and the directory
source produces raw dicts: one shape for both.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config, watch

from meshagent.sources.kinds import Kind, KindInfo

logger = logging.getLogger(__name__)


HTTP_GONE = 410


class KubeListError(Exception):
    """A list call answered with something that is not a list (bad status or body)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"list failed with HTTP {status}: {message}")
        self.status = status


def load_api_client(
    *, kubeconfig: str | None = None, context: str | None = None, host: str | None = None
) -> client.ApiClient:
    """An ApiClient for, in order of preference: `host` (plain URL, tests), `kubeconfig`,
    the in-cluster service account, the default kubeconfig (~/.kube/config)."""
    if host is not None:
        return client.ApiClient(client.Configuration(host=host))
    if kubeconfig is not None:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    try:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        logger.info("using the in-cluster service account")
        return client.ApiClient(configuration)
    except config.ConfigException:
        logger.info("not in a cluster; using the default kubeconfig")
        return config.new_client_from_config(context=context)


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK (ERROR is raised by the client)
    obj: dict[str, Any]


def _list_function(api_client: client.ApiClient, info: KindInfo) -> Callable[..., Any]:
    """The official client's list-all function of a kind (also used for its watch)."""
    core = client.CoreV1Api(api_client)
    functions: dict[Kind, Callable[..., Any]] = {
        Kind.NAMESPACE: core.list_namespace,
        Kind.POD: core.list_pod_for_all_namespaces,
        Kind.SERVICE: core.list_service_for_all_namespaces,
        Kind.NODE: core.list_node,
        Kind.ENDPOINT_SLICE: client.DiscoveryV1Api(api_client).list_endpoint_slice_for_all_namespaces,
        Kind.NETWORK_POLICY: client.NetworkingV1Api(api_client).list_network_policy_for_all_namespaces,
    }
    if info.kind in functions:
        return _untyped(functions[info.kind])
    # A CRD: the generic custom-objects call, with group/version/plural bound.
    return _untyped(
        functools.partial(
            client.CustomObjectsApi(api_client).list_cluster_custom_object,
            info.group,
            info.version,
            info.plural,
        )
    )


def _untyped(function: Callable[..., Any]) -> Callable[..., Any]:
    """Hide the list function's return type from `Watch`.

    Watch finds the model to deserialize into from the function's annotation or
    docstring; with none it hands back the raw dicts, which is what we want. Its own
    `deserialize=False` switch is no use: with it an in-stream ERROR event (410 Gone)
    fails with KeyError('raw_object') in client 37.x instead of raising ApiException.
    """

    def list_or_watch(*args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]  # no annotation on purpose
        return function(*args, **kwargs)

    return list_or_watch


class ResourceClient:
    """List and watch one kind across all namespaces."""

    def __init__(self, api_client: client.ApiClient, info: KindInfo, *, connect_timeout: float = 5.0) -> None:
        self.info = info
        self._list = _list_function(api_client, info)
        self._connect_timeout = connect_timeout
        self._watch: watch.Watch | None = None

    def list_all(
        self, *, read_timeout: float = 60.0, page_size: int = 500
    ) -> tuple[list[dict[str, Any]], str]:
        """All objects (with kind and apiVersion filled in, as list items lack them) and the list's
        resourceVersion, read in pages of `page_size` (0 = one request).

        Pages after the first come from the server's snapshot of the first; when that expired
        (410 on a continuation) the whole list starts again, as client-go's pager does.
        """
        for _attempt in range(3):
            items: list[dict[str, Any]] = []
            token: str | None = None
            try:
                while True:
                    page, rv, token = self._list_page(read_timeout, page_size, token)
                    items.extend(page)
                    if not token:
                        return items, rv
            except KubeListError as err:
                if err.status != HTTP_GONE or token is None:
                    raise
                logger.info("%s: list snapshot expired between pages; listing again", self.info.kind)
        raise KubeListError(HTTP_GONE, "list snapshot kept expiring between pages")

    def _list_page(
        self, read_timeout: float, page_size: int, token: str | None
    ) -> tuple[list[dict[str, Any]], str, str | None]:
        kwargs: dict[str, Any] = {}
        if page_size:
            kwargs["limit"] = page_size
        if token:
            kwargs["_continue"] = token
        resp = self._list(
            _preload_content=False, _request_timeout=(self._connect_timeout, read_timeout), **kwargs
        )
        try:
            status = int(getattr(resp, "status", 200))
            body = resp.data
        finally:
            resp.release_conn()
        if not 200 <= status <= 299:
            raise KubeListError(status, body[:200].decode(errors="replace"))
        try:
            doc = json.loads(body)
            items = doc["items"] or []
            rv = str(doc["metadata"]["resourceVersion"])
            token = doc["metadata"].get("continue") or None
        except (ValueError, KeyError, TypeError) as err:
            raise KubeListError(status, f"not a list: {err}") from err
        for item in items:
            self.fill_type(item)
        return items, rv, token

    def fill_type(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("kind", str(self.info.kind))
        obj.setdefault("apiVersion", self.info.api_version)
        return obj

    def watch(
        self,
        *,
        resource_version: str,
        timeout_seconds: int,
        read_timeout: float,
        on_open: Callable[[], None] | None = None,
    ) -> Iterator[WatchEvent]:
        """Events after `resource_version` until the server ends the stream (after timeout_seconds).

        Raises the client's ApiException (status 410 when the version is too old), or urllib3's
        ProtocolError / MaxRetryError / ReadTimeoutError on a broken or unreachable server.
        Passing timeout_seconds also stops the client's silent re-request on EOF, so the
        caller always knows where it stands.
        """
        w = watch.Watch()
        self._watch = w
        list_function = self._list

        def open_stream(*args, **kwargs):  # type: ignore[no-untyped-def]  # untyped on purpose, see _untyped
            # Called by Watch to start each request: a 2xx answer means we are connected again,
            # even if no event or bookmark comes for a while.
            resp = list_function(*args, **kwargs)
            if on_open is not None and 200 <= int(getattr(resp, "status", 0)) <= 299:
                on_open()
            return resp

        try:
            for event in w.stream(
                open_stream,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _request_timeout=(self._connect_timeout, read_timeout),
            ):
                obj = event.get("object")
                if isinstance(obj, dict):
                    yield WatchEvent(str(event.get("type")), obj)
        finally:
            self._watch = None

    def stop_watch(self) -> None:
        """Unblock a watch in progress (from another thread)."""
        w = self._watch
        if w is not None:
            w.stop()
