"""A directory of manifests (multi-document YAML or JSON, `kind: List` too) -> policy models.

For the CLI until the agent serves the compiled state: every object is parsed on its own, so one bad
object is reported (file, document, reason) and every other one stays in force.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshagent.model.admin_policy import AdminNetworkPolicy
from meshagent.model.cluster import LocalEndpoint, Namespace, Pod
from meshagent.model.errors import PolicyInputError
from meshagent.model.netpol import NetworkPolicy
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.identity import IdentityAllocator, LabelFilter
from meshagent.policy.parse import parse_object

logger = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class ManifestError:
    path: str
    document: int  # 1-based position of the document in its file
    reason: str

    def __str__(self) -> str:
        return f"{self.path} (document {self.document}): {self.reason}"


@dataclass(frozen=True)
class ManifestSet:
    namespaces: tuple[Namespace, ...]
    pods: tuple[Pod, ...]
    network_policies: tuple[NetworkPolicy, ...]
    admin_policies: tuple[AdminNetworkPolicy, ...]
    errors: tuple[ManifestError, ...]


def _documents(path: Path) -> Iterator[tuple[int, Any]]:
    text = path.read_text()
    for index, doc in enumerate(yaml.safe_load_all(text), start=1):
        if isinstance(doc, Mapping) and doc.get("kind") == "List":
            for item in doc.get("items") or []:
                yield index, item
        elif doc is not None:
            yield index, doc


def load_manifests(directory: Path) -> ManifestSet:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    namespaces: dict[str, Namespace] = {}
    pods: dict[tuple[str, str], Pod] = {}
    nps: dict[tuple[str, str], NetworkPolicy] = {}
    anps: dict[str, AdminNetworkPolicy] = {}
    errors: list[ManifestError] = []
    for path in sorted(p for p in directory.rglob("*") if p.suffix in SUFFIXES and p.is_file()):
        try:
            documents = list(_documents(path))
        except (OSError, yaml.YAMLError) as err:
            errors.append(ManifestError(str(path), 0, f"unreadable: {err}"))
            continue
        for index, doc in documents:
            try:
                obj = parse_object(doc)
            except PolicyInputError as err:
                errors.append(ManifestError(str(path), index, str(err)))
                continue
            if isinstance(obj, Namespace):
                namespaces[obj.name] = obj
            elif isinstance(obj, Pod):
                pods[obj.key] = obj
            elif isinstance(obj, NetworkPolicy):
                nps[obj.key] = obj
            elif isinstance(obj, AdminNetworkPolicy):
                anps[obj.name] = obj
    for error in errors:
        logger.warning("rejected: %s", error)
    return ManifestSet(
        tuple(namespaces.values()),
        tuple(pods.values()),
        tuple(nps.values()),
        tuple(anps.values()),
        tuple(errors),
    )


def compile_manifests(
    manifests: ManifestSet, *, node: str | None = None, label_filter: LabelFilter | None = None
) -> PolicyCompiler:
    """A compiler loaded with the manifests. Local endpoints: the pods on `node` (every pod when None),
    numbered in name order (the datapath's real ids and ifindexes are not known offline)."""
    compiler = PolicyCompiler(label_filter=label_filter, identities=IdentityAllocator())
    local_pods = sorted(
        (
            p
            for p in manifests.pods
            if p.ip is not None and not p.host_network and (node is None or p.node == node)
        ),
        key=lambda p: p.key,
    )
    compiler.load(
        namespaces=manifests.namespaces,
        pods=manifests.pods,
        policies=(*manifests.network_policies, *manifests.admin_policies),
        local=[(p.key, LocalEndpoint(endpoint_id=i, ifindex=0)) for i, p in enumerate(local_pods, start=1)],
    )
    return compiler
