"""A manifest directory read for `meshagent policy list|trace` exactly as `meshagent run --manifests`
reads it: one scan of the directory source (same files, same normalisation, same handling of duplicates
and broken files), then each object parsed into the policy models on its own, so one bad object is
reported and every other one stays in force."""

from __future__ import annotations

import logging
from pathlib import Path

from meshagent.model.admin_policy import AdminNetworkPolicy
from meshagent.model.cluster import Namespace, Pod
from meshagent.model.errors import PolicyInputError
from meshagent.model.netpol import NetworkPolicy
from meshagent.policy.manifests import ManifestSet
from meshagent.policy.parse import parse_object
from meshagent.sources.directory_source import DirectorySource
from meshagent.sources.events import ObjectEvent, SourceEvent

logger = logging.getLogger(__name__)


def load_manifests(directory: Path) -> ManifestSet:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    events: list[SourceEvent] = []
    source = DirectorySource(directory, events.append)
    source.scan_now()
    namespaces: list[Namespace] = []
    pods: list[Pod] = []
    network_policies: list[NetworkPolicy] = []
    admin_policies: list[AdminNetworkPolicy] = []
    errors = list(source.status().errors)
    for event in events:
        if not isinstance(event, ObjectEvent):
            continue
        try:
            model = parse_object(event.obj)
        except PolicyInputError as err:
            logger.warning("rejected: %s", err)
            errors.append(str(err))
            continue
        if isinstance(model, Namespace):
            namespaces.append(model)
        elif isinstance(model, Pod):
            pods.append(model)
        elif isinstance(model, NetworkPolicy):
            network_policies.append(model)
        elif isinstance(model, AdminNetworkPolicy):
            admin_policies.append(model)
    return ManifestSet(
        tuple(namespaces), tuple(pods), tuple(network_policies), tuple(admin_policies), tuple(errors)
    )
