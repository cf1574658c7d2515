"""The directory source: files added, edited, deleted, renamed or broken, like the API would."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.sources.directory_source import DirectorySource
from meshagent.sources.events import Action, SyncEvent
from meshagent.sources.kinds import KINDS, Kind
from meshagent.sources.pipeline import Dispatcher
from meshagent.sources.store import ObjectStore

from tests.sources.conftest import Recorder
from tests.waiting import wait_until

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: web
spec:
  nodeName: node-1
status:
  podIP: {ip}
"""
NS = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n  labels: {team: a}\n"
NP = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: web}\nspec: {}\n"


class Rig:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.store = ObjectStore()
        self.recorder = Recorder()
        self.store.subscribe(self.recorder)
        self.dispatcher = Dispatcher(self.store)
        self.source = DirectorySource(directory, self.dispatcher.put, poll_interval=0.05)

    def write(self, name: str, text: str) -> None:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("." + path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic, as editors and kubectl-like tools save

    def settle(self) -> None:
        """Scan now and wait until the consumer has applied everything."""
        self.source.scan_now()
        assert wait_until(lambda: self.dispatcher.backlog == 0)
        # backlog 0 means taken off the queue; one more no-op round trip makes sure it was applied.
        marker = SyncEvent(Kind.NODE)
        self.dispatcher.put(marker)
        assert wait_until(lambda: self.recorder.events[-1:] == [marker])
        self.recorder.events.pop()

    def pod_ips(self) -> dict[str, str]:
        return {p["metadata"]["name"]: p["status"]["podIP"] for p in self.store.objects(Kind.POD)}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    r.dispatcher.start()
    try:
        yield r
    finally:
        r.source.stop()
        r.dispatcher.stop()


def test_initial_read_then_synced(rig: Rig) -> None:
    rig.write("ns.yaml", NS)
    rig.write(
        "pods/p.yaml", POD.format(name="p1", ip="10.1.0.1") + "---\n" + POD.format(name="p2", ip="10.1.0.2")
    )
    rig.source.start()
    assert rig.source.ready
    assert wait_until(lambda: rig.store.synced)
    assert rig.pod_ips() == {"p1": "10.1.0.1", "p2": "10.1.0.2"}
    ns = rig.store.get(Kind.NAMESPACE, "", "web")
    assert ns is not None and ns["metadata"]["labels"] == {"team": "a", "kubernetes.io/metadata.name": "web"}
    syncs = [e.kind for e in rig.recorder.events if isinstance(e, SyncEvent)]
    assert sorted(syncs) == sorted(info.kind for info in KINDS)
    # Namespaces come before what lives in them.
    kinds = [e.kind for e in rig.recorder.objects()]
    assert kinds.index(Kind.NAMESPACE) < kinds.index(Kind.POD)
    assert rig.store.local_pods("node-1") and not rig.store.local_pods("node-2")


def test_create_edit_delete(rig: Rig) -> None:
    rig.source.start()
    rig.write("a.yaml", NS + "---\n" + POD.format(name="p1", ip="10.1.0.1"))
    rig.settle()
    assert rig.pod_ips() == {"p1": "10.1.0.1"}
    rig.write("a.yaml", NS + "---\n" + POD.format(name="p1", ip="10.1.0.9") + "---\n" + NP)
    rig.settle()
    assert rig.pod_ips() == {"p1": "10.1.0.9"}
    assert rig.store.get(Kind.NETWORK_POLICY, "web", "np") is not None
    (rig.dir / "a.yaml").unlink()
    rig.settle()
    assert rig.store.objects(Kind.POD) == [] and rig.store.objects(Kind.NAMESPACE) == []
    assert [(str(e.action), str(e.kind), e.name) for e in rig.recorder.objects()] == [
        ("ADDED", "Namespace", "web"),
        ("ADDED", "Pod", "p1"),
        ("ADDED", "NetworkPolicy", "np"),
        ("MODIFIED", "Pod", "p1"),
        ("DELETED", "NetworkPolicy", "np"),
        ("DELETED", "Pod", "p1"),
        ("DELETED", "Namespace", "web"),
    ]
    versions = [int(e.resource_version) for e in rig.recorder.objects()]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_rename_changes_nothing_and_touch_emits_nothing(rig: Rig) -> None:
    rig.write("a.yaml", NS + "---\n" + POD.format(name="p1", ip="10.1.0.1"))
    rig.source.start()
    rig.settle()
    rig.recorder.clear()
    os.rename(rig.dir / "a.yaml", rig.dir / "b.yaml")
    rig.settle()
    os.utime(rig.dir / "b.yaml")  # new mtime, same content
    rig.settle()
    assert rig.recorder.objects() == []
    assert rig.pod_ips() == {"p1": "10.1.0.1"}


def test_malformed_file_is_reported_and_keeps_its_last_good_objects(rig: Rig) -> None:
    rig.write("ns.yaml", NS)
    rig.write("a.yaml", POD.format(name="p1", ip="10.1.0.1"))
    rig.write("b.yaml", POD.format(name="p2", ip="10.1.0.2"))
    rig.source.start()
    rig.settle()
    rig.recorder.clear()
    rig.write("a.yaml", POD.format(name="p1", ip="10.1.0.1") + "  broken: [\n")
    rig.write("c.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [oops\n")  # broken from the start
    rig.write(
        "d.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\n"
        + POD.format(name="p4", ip="10.1.0.4"),
    )
    rig.settle()
    errors = rig.source.status().errors
    assert any(e.startswith("a.yaml:11: malformed YAML") for e in errors), errors
    assert any(e.startswith("c.yaml:5: malformed YAML") and "line 4" in e for e in errors), errors
    assert any(e.startswith("d.yaml:1: unknown kind 'Deployment'") for e in errors), errors
    assert rig.pod_ips() == {"p1": "10.1.0.1", "p2": "10.1.0.2", "p4": "10.1.0.4"}
    assert [(str(e.action), e.name) for e in rig.recorder.objects()] == [("ADDED", "p4")]
    # Fixing the file applies its new content and clears its problem.
    rig.write("a.yaml", POD.format(name="p1", ip="10.1.0.11"))
    (rig.dir / "c.yaml").unlink()
    rig.settle()
    assert rig.pod_ips() == {"p1": "10.1.0.11", "p2": "10.1.0.2", "p4": "10.1.0.4"}
    assert [e for e in rig.source.status().errors if not e.startswith("d.yaml")] == []


def test_duplicates_across_files_first_wins_then_the_other_takes_over(rig: Rig) -> None:
    rig.write("a.yaml", POD.format(name="p1", ip="10.1.0.1"))
    rig.write("b.yaml", POD.format(name="p1", ip="10.1.0.2"))
    rig.source.start()
    rig.settle()
    assert rig.pod_ips() == {"p1": "10.1.0.1"}
    assert any("already defined in a.yaml:1" in e for e in rig.source.status().errors)
    # Namespaces nobody declared exist implicitly, as in a cluster.
    assert rig.store.get(Kind.NAMESPACE, "", "web") is not None
    (rig.dir / "a.yaml").unlink()
    rig.settle()
    assert rig.pod_ips() == {"p1": "10.1.0.2"}
    assert rig.source.status().errors == ()


def test_missing_directory_keeps_state(rig: Rig) -> None:
    rig.write("sub/a.yaml", POD.format(name="p1", ip="10.1.0.1"))
    rig.source = DirectorySource(rig.dir / "sub", rig.dispatcher.put, poll_interval=0.05)
    rig.source.start()
    rig.settle()
    shutil.rmtree(rig.dir / "sub")
    rig.settle()
    status = rig.source.status()
    assert not status.connected and status.last_error and "cannot read" in status.last_error
    assert rig.pod_ips() == {"p1": "10.1.0.1"}


def test_watcher_picks_up_changes_by_itself(rig: Rig) -> None:
    rig.source.start()
    rig.write("a.yaml", POD.format(name="p1", ip="10.1.0.1"))
    assert wait_until(lambda: rig.pod_ips() == {"p1": "10.1.0.1"}, timeout=3)
    events = [e for e in rig.recorder.objects() if e.kind is Kind.POD]
    assert [e.action for e in events] == [Action.ADDED]


# Longer than any wait below: a change seen within the wait was seen by the watcher, not by a poll.
NEVER_POLL = 3600.0


def test_changes_are_seen_by_the_watcher_not_by_polling(rig: Rig) -> None:
    rig.source = DirectorySource(rig.dir, rig.dispatcher.put, poll_interval=NEVER_POLL)
    rig.source.start()
    rig.write("a.yaml", POD.format(name="p1", ip="10.1.0.1"))
    assert wait_until(lambda: rig.pod_ips() == {"p1": "10.1.0.1"}, timeout=10)
    rig.write("deep/er/b.yaml", POD.format(name="p2", ip="10.1.0.2"))  # new sub-folders are watched too
    assert wait_until(lambda: rig.pod_ips() == {"p1": "10.1.0.1", "p2": "10.1.0.2"}, timeout=10)
    (rig.dir / "a.yaml").unlink()
    assert wait_until(lambda: rig.pod_ips() == {"p2": "10.1.0.2"}, timeout=10)


class ConfigMapVolume:
    """A folder laid out as the kubelet lays out a mounted ConfigMap: the data in a timestamped hidden
    folder, `..data` a symlink to it, and each key a symlink through `..data`. An update writes a new
    timestamped folder and swaps `..data` atomically (a rename of a new symlink over it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def publish(self, files: dict[str, str]) -> None:
        self.generation += 1
        data = self.root / f"..2026_12_07_00_00_{self.generation:02d}.000000001"
        data.mkdir()
        for name, text in files.items():
            (data / name).write_text(text)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.symlink(data.name, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / "..data")
        for name in files:
            if not (self.root / name).is_symlink():
                os.symlink(f"..data/{name}", self.root / name)
        for link in self.root.iterdir():
            if not link.name.startswith(".") and link.name not in files:
                link.unlink()  # a key removed from the ConfigMap
        if old is not None:
            shutil.rmtree(self.root / old)


def test_a_mounted_configmap_update_is_seen(rig: Rig) -> None:
    volume = ConfigMapVolume(rig.dir)
    volume.publish({"ns.yaml": NS, "pods.yaml": POD.format(name="p1", ip="10.1.0.1")})
    rig.source = DirectorySource(rig.dir, rig.dispatcher.put, poll_interval=NEVER_POLL)
    rig.source.start()
    rig.settle()
    assert rig.pod_ips() == {"p1": "10.1.0.1"}
    assert rig.source.status().errors == ()  # the hidden data folders are not read twice
    volume.publish({"ns.yaml": NS, "pods.yaml": POD.format(name="p1", ip="10.1.0.9")})
    assert wait_until(lambda: rig.pod_ips() == {"p1": "10.1.0.9"}, timeout=10)
    # A key added, one gone.
    volume.publish({"ns.yaml": NS, "more.yaml": POD.format(name="p2", ip="10.1.0.2")})
    assert wait_until(lambda: rig.pod_ips() == {"p2": "10.1.0.2"}, timeout=10)
    modified = [e for e in rig.recorder.objects() if e.kind is Kind.POD and e.action is Action.MODIFIED]
    assert [e.obj["status"]["podIP"] for e in modified] == ["10.1.0.9"]  # each update applied once


def test_a_folder_that_appears_later_or_is_replaced_is_watched(rig: Rig) -> None:
    folder = rig.dir / "later"
    rig.source = DirectorySource(folder, rig.dispatcher.put, poll_interval=0.05)
    rig.source.start()
    assert not rig.source.status().connected
    folder.mkdir()
    (folder / "a.yaml").write_text(POD.format(name="p1", ip="10.1.0.1"))
    assert wait_until(lambda: rig.pod_ips() == {"p1": "10.1.0.1"}, timeout=10)
    replacement = rig.dir / "replacement"
    replacement.mkdir()
    (replacement / "a.yaml").write_text(POD.format(name="p1", ip="10.1.0.5"))
    os.rename(folder, rig.dir / "old")
    os.rename(replacement, folder)
    assert wait_until(lambda: rig.pod_ips() == {"p1": "10.1.0.5"}, timeout=10)
    rig.write("later/b.yaml", POD.format(name="p2", ip="10.1.0.2"))  # and the new folder is watched
    assert wait_until(lambda: set(rig.pod_ips()) == {"p1", "p2"}, timeout=10)
