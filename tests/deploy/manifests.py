"""Reading deploy/: the kustomizations, the files they list and the objects in them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZATION = "kustomization.yaml"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    path: Path
    index: int  # position of the document in its file
    obj: Obj

    @property
    def ref(self) -> str:
        return f"{self.path.relative_to(REPO)}#{self.index} {self.obj.get('kind')}/{name_of(self.obj)}"


def name_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob(KUSTOMIZATION))


def listed_resources(kustomization: Path) -> list[Path]:
    """The files a kustomization lists under `resources` (directories are other kustomizations)."""
    doc = yaml.safe_load(kustomization.read_text()) or {}
    return [(kustomization.parent / entry).resolve() for entry in doc.get("resources") or []]


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest under deploy/ (YAML that is not a kustomization)."""
    return sorted(
        p.resolve() for p in [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")] if p.name != KUSTOMIZATION
    )


def load(path: Path) -> list[Manifest]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return [Manifest(path, i, doc) for i, doc in enumerate(docs)]


def all_manifests() -> list[Manifest]:
    return [m for path in manifest_files() for m in load(path)]


def agent_manifests() -> list[Manifest]:
    """What `kubectl apply -k deploy/` applies: the top kustomization's files."""
    return [m for path in listed_resources(DEPLOY / KUSTOMIZATION) for m in load(path)]


def one(kind: str, manifests: list[Manifest] | None = None) -> Obj:
    found = [
        m.obj for m in (manifests if manifests is not None else agent_manifests()) if m.obj["kind"] == kind
    ]
    assert len(found) == 1, f"expected one {kind} in deploy/, found {len(found)}"
    return found[0]


def containers(daemonset: Obj) -> Iterator[Obj]:
    spec = daemonset["spec"]["template"]["spec"]
    yield from spec.get("initContainers") or []
    yield from spec["containers"]


def agent_container(daemonset: Obj) -> Obj:
    (agent,) = [c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    return agent
