"""open_desired_state: what `meshagent run` calls, for --manifests DIR and for a kubeconfig."""

from __future__ import annotations

from pathlib import Path

import yaml
from meshagent.sources.kinds import Kind
from meshagent.sources.source import open_desired_state

from tests.sources import objects
from tests.sources.k8s_emulator import KubeEmulator
from tests.waiting import wait_until


def test_manifests_directory(tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(objects.one_of_each()))
    state = open_desired_state(manifests=tmp_path, node="node-1", poll_interval=0.05)
    state.start()
    try:
        assert state.source.wait_ready(5)
        assert state.store.wait_for(lambda s: s.synced, timeout=5)
        assert state.store.get(Kind.ADMIN_NETWORK_POLICY, "", "anp") is not None
        assert [p["metadata"]["name"] for p in state.store.local_pods("node-1")] == ["p1"]
        assert state.source.status().source == "directory"
    finally:
        state.stop()


def test_kubeconfig(tmp_path: Path, emulator: KubeEmulator) -> None:
    for obj in objects.one_of_each():
        emulator.apply(obj)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": emulator.url}}],
        "users": [{"name": "me", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "me"}}],
    }))  # fmt: skip
    state = open_desired_state(kubeconfig=str(kubeconfig), node="node-1")
    state.start()
    try:
        assert state.source.wait_ready(5)
        assert state.store.wait_for(lambda s: s.synced, timeout=5)
        assert {o["metadata"]["name"] for o in state.store.objects(Kind.SERVICE)} == {"svc"}
        assert state.source.status().source == "kubernetes"
        made = emulator.apply(objects.pod("new", "web"))
        assert wait_until(lambda: state.store.get(Kind.POD, "web", "new") == made)
    finally:
        state.stop()
