"""The Services, EndpointSlices and routes the agent knows, kept parsed, and compiled on demand.

Objects arrive as raw Kubernetes dicts from the sources. A bad object is reported (returned and logged)
and changes nothing: the last good version of it stays in force, as does every other object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from meshagent.model.services import EndpointSlice, ObjectRef, Route, Service, ServiceInputError
from meshagent.services.compile import CompileResult, compile_services
from meshagent.services.parse import parse_endpoint_slice, parse_route, parse_service

logger = logging.getLogger(__name__)

KINDS = ("Service", "EndpointSlice", "TCPRoute", "UDPRoute")


class ServiceCatalog:
    def __init__(self) -> None:
        self._services: dict[ObjectRef, Service] = {}
        self._slices: dict[ObjectRef, EndpointSlice] = {}
        self._routes: dict[tuple[str, ObjectRef], Route] = {}

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> ServiceInputError | None:
        """Adds or replaces an object; returns the error (and keeps the previous version) if it is bad."""
        parsers: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            "Service": parse_service,
            "EndpointSlice": parse_endpoint_slice,
            "TCPRoute": parse_route,
            "UDPRoute": parse_route,
        }
        if kind not in parsers:
            return ServiceInputError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        try:
            parsed = parsers[kind](obj)
        except ServiceInputError as err:
            logger.warning("rejected: %s", err)
            return err
        if isinstance(parsed, Service):
            self._services[parsed.ref] = parsed
        elif isinstance(parsed, EndpointSlice):
            self._slices[parsed.ref] = parsed
        else:
            self._routes[(kind, parsed.ref)] = parsed
        return None

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        ref = ObjectRef(namespace, name)
        if kind == "Service":
            return self._services.pop(ref, None) is not None
        if kind == "EndpointSlice":
            return self._slices.pop(ref, None) is not None
        return self._routes.pop((kind, ref), None) is not None

    def compile(self) -> CompileResult:
        return compile_services(self._services.values(), self._slices.values(), self._routes.values())
