"""Every manifest under deploy/ validates against the Kubernetes API's JSON schemas, strictly (unknown
fields are errors), for each supported Kubernetes version.

The schemas come from the `kubernetes-validate` package (PyPI), which ships them for each minor version:
no network and no cluster needed.
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from tests.deploy.manifests import Manifest, all_manifests, one

# The oldest version we support: the DaemonSet uses securityContext.appArmorProfile (GA in 1.30).
OLDEST_SUPPORTED = Version("1.30")
SUPPORTED = sorted({v for v in all_versions() if Version(v) >= OLDEST_SUPPORTED}, key=Version)
MANIFESTS = all_manifests()


def test_supported_versions_are_available_offline() -> None:
    assert SUPPORTED, "kubernetes-validate ships no schema for a supported version"
    assert Version(SUPPORTED[0]).release[:2] == OLDEST_SUPPORTED.release[:2]
    assert len(MANIFESTS) >= 8  # namespace, account, role, binding, configmap, daemonset, service, CRD


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.ref)
def test_manifest_validates(manifest: Manifest, version: str) -> None:
    validated = kubernetes_validate.validate(manifest.obj, version, strict=True)
    assert Version(validated).minor == Version(version).minor


def test_the_validator_rejects_what_the_api_server_would() -> None:
    """The check can fail: an unknown field and a wrong type in our DaemonSet are caught."""
    daemonset = one("DaemonSet")
    unknown = copy.deepcopy(daemonset)
    unknown["spec"]["template"]["spec"]["containers"][0]["capabilites"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError, match="capabilites"):
        kubernetes_validate.validate(unknown, str(SUPPORTED[-1]), strict=True)
    wrong_type = copy.deepcopy(daemonset)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "15"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, str(SUPPORTED[-1]), strict=True)
