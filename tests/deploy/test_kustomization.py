"""The kustomizations list every manifest (each in exactly one), list nothing that is missing, and render
with kustomize to exactly those objects."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import (
    DEPLOY,
    KUSTOMIZATION,
    REPO,
    kustomizations,
    listed_resources,
    load,
    manifest_files,
)


def _key(obj: dict[str, object]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    assert isinstance(meta, dict)
    return str(obj["kind"]), str(meta.get("namespace", "")), str(meta["name"])


def test_every_manifest_is_listed_exactly_once() -> None:
    listed = Counter(path for k in kustomizations() for path in listed_resources(k) if path.is_file())
    files = set(manifest_files())
    assert files, "no manifests under deploy/"
    assert files - listed.keys() == set(), f"not in any kustomization: {sorted(files - listed.keys())}"
    assert [p for p, n in listed.items() if n > 1] == [], "listed twice"
    assert listed.keys() - files == set(), "a kustomization lists something that is not a manifest"


def test_kustomizations_list_only_what_exists() -> None:
    for kustomization in kustomizations():
        for path in listed_resources(kustomization):
            assert path.is_file() or (path / KUSTOMIZATION).is_file(), f"{kustomization}: {path} is missing"
            assert path.is_relative_to(DEPLOY), f"{kustomization}: {path} is outside deploy/"


def test_the_agent_kustomization_leaves_the_crd_out() -> None:
    """Applying deploy/ must not replace an AdminNetworkPolicy CRD the cluster already has (upstream's)."""
    kinds = {m.obj["kind"] for path in listed_resources(DEPLOY / KUSTOMIZATION) for m in load(path)}
    assert "CustomResourceDefinition" not in kinds
    assert "DaemonSet" in kinds


@pytest.mark.parametrize("kustomization", kustomizations(), ids=lambda p: str(p.relative_to(REPO)))
def test_kustomize_renders_exactly_the_listed_objects(kustomization: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(kustomization.parent)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    expected = [m.obj for path in listed_resources(kustomization) for m in load(path)]
    assert sorted(_key(o) for o in rendered) == sorted(_key(o) for o in expected)
    # The images transformer is wired: every image it names is rewritten the way it says.
    config = yaml.safe_load(kustomization.read_text())
    images = {i["name"]: i for i in config.get("images") or []}
    for obj in rendered:
        if obj["kind"] != "DaemonSet":
            continue
        spec = obj["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            name, _, tag = container["image"].partition(":")
            assert name in images, f"{container['name']} uses {name}, which the kustomization cannot retag"
            assert tag == images[name]["newTag"]
