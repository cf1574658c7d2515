"""The directory source: manifests in a folder, watched with inotify, emitted like the API would.

The folder is watched through watchfiles (inotify) and scanned on every change, so an edit reaches the
consumer in milliseconds, not at the next poll. It is also scanned every `poll_interval` seconds when
nothing happens: that scan costs a stat per file, and it catches what a watch can miss (events dropped
when inotify's queue overflows; a file replaced by one of the same size, which watchfiles' own polling,
used where inotify is missing, does not notice). While the folder does not exist, it is looked for as
often. A mounted ConfigMap works as it is: its files are symlinks through `..data`, which the kubelet
swaps atomically; the swap is a change in the folder.

Each scan stats every manifest file and re-reads only those whose (mtime, size, inode)
changed, then re-parses only when the content hash changed. The objects of all files
are merged (in path order; the first definition of an object wins) and compared with
what was emitted before: only the differences go out, so renaming a file emits nothing
and moving an object between files emits at most a MODIFIED. A file that turns fatal
(broken YAML, an invalid object) keeps contributing its last good objects.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import watchfiles

from meshagent.sources.events import Action, ObjectEvent, ObjectKey, SyncEvent, object_key
from meshagent.sources.kinds import KINDS, Kind, kind_info
from meshagent.sources.manifests import ManifestProblem, implicit_namespace, parse_manifest
from meshagent.sources.sink import Sink
from meshagent.sources.status import SourceStatus

logger = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
_KIND_ORDER = {info.kind: i for i, info in enumerate(KINDS)}
# After a change, how long (ms) to wait for more before scanning: an editor's or kubelet's burst is one scan.
_WATCH_STEP_MS = 20


@dataclass(frozen=True)
class _FileState:
    signature: tuple[int, int, int]  # (mtime_ns, size, inode)
    digest: str
    objects: tuple[tuple[int, dict[str, Any]], ...]  # last good objects
    problems: tuple[ManifestProblem, ...]


def _is_manifest(name: str) -> bool:
    # Hidden files and editor droppings (.foo.swp, foo~, #foo#) are not manifests.
    return name.endswith(SUFFIXES) and not name.startswith((".", "#"))


def _without_version(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


class DirectorySource:
    def __init__(self, directory: Path | str, sink: Sink, *, poll_interval: float = 0.5) -> None:
        self.directory = Path(directory)
        self._sink = sink
        self._poll_interval = poll_interval
        self._files: dict[Path, _FileState] = {}
        self._emitted: dict[ObjectKey, dict[str, Any]] = {}  # what the consumer has, without versions
        self._version = 0
        self._lock = threading.Lock()  # scans may come from the poller and from scan_now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = False
        self._last_error: str | None = None
        self._last_sync: float | None = None
        self._merge_problems: tuple[str, ...] = ()

    # --- control -------------------------------------------------------------------------

    def start(self) -> None:
        self.scan_now()
        self._thread = threading.Thread(target=self._run, name="manifest-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def ready(self) -> bool:
        return self._ready

    def wait_ready(self, timeout: float) -> bool:
        return self._ready  # the first scan runs inside start()

    def status(self) -> SourceStatus:
        with self._lock:
            problems = tuple(str(p) for state in self._files.values() for p in state.problems)
            return SourceStatus(
                source="directory",
                ready=self._ready,
                connected=self._last_error is None,
                last_error=self._last_error,
                last_sync=self._last_sync,
                errors=problems + self._merge_problems,
            )

    def report_rejected(self, obj_ref: object, reason: str, message: str = "") -> None:
        """No API server to post an Event to: the rejection is logged."""
        logger.warning("rejected %s: %s %s", obj_ref, reason, message)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                watched: os.stat_result | None = os.stat(self.directory)
            except OSError:
                watched = None
            if watched is not None and self._watch(watched):
                continue  # stopped, or the folder went or was replaced: look at it again
            # Not there, or not watchable, for now: scan (which records the outage) and look again later.
            if self._stop.wait(self._poll_interval):
                return
            self._scan_logged()

    def _watch(self, watched: os.stat_result) -> bool:
        """Scans on every change and every poll interval until stopped or the folder is gone or replaced;
        False if it cannot be watched."""
        changes = watchfiles.watch(
            self.directory,
            watch_filter=None,  # which files count is the scan's business
            step=_WATCH_STEP_MS,
            rust_timeout=max(1, int(self._poll_interval * 1000)),
            yield_on_timeout=True,  # an empty set: the periodic scan
            stop_event=self._stop,
            raise_interrupt=False,
        )
        try:
            for _changed in changes:
                self._scan_logged()
                try:
                    now = os.stat(self.directory)
                except OSError:
                    return True
                if (now.st_dev, now.st_ino) != (watched.st_dev, watched.st_ino):
                    return True  # replaced by another folder: watch that one
        except (OSError, RuntimeError) as err:  # watchfiles reports a folder it cannot watch so
            logger.warning(
                "cannot watch %s (%s); looking again in %gs", self.directory, err, self._poll_interval
            )
            return False
        return True

    def _scan_logged(self) -> None:
        try:
            self.scan_now()
        except Exception:
            logger.exception("scanning %s failed; keeping the last known state", self.directory)

    # --- scanning ------------------------------------------------------------------------

    def scan_now(self) -> None:
        """One scan: read what changed and emit the differences."""
        with self._lock:
            try:
                paths = self._list_files()
            except OSError as err:
                # A missing or unreadable directory is an outage, not "everything was deleted".
                if self._last_error is None:
                    logger.warning("cannot read %s: %s; keeping the last known state", self.directory, err)
                self._last_error = f"cannot read {self.directory}: {err}"
                return
            self._last_error = None
            files: dict[Path, _FileState] = {}
            for path in paths:
                state = self._read(path, self._files.get(path))
                if state is not None:
                    files[path] = state
            self._files = files
            self._emit(self._merge())
            self._last_sync = time.time()
            if not self._ready:
                for info in KINDS:
                    self._sink(SyncEvent(info.kind))
                self._ready = True

    def _list_files(self) -> list[Path]:
        found: list[Path] = []
        for root, dirs, names in os.walk(self.directory, onerror=_raise):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(Path(root) / n for n in names if _is_manifest(n))
        if not self.directory.is_dir():
            raise NotADirectoryError(str(self.directory))
        return sorted(found)

    def _read(self, path: Path, previous: _FileState | None) -> _FileState | None:
        try:
            st = path.stat()
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            if previous is not None and previous.signature == signature:
                return previous
            data = path.read_bytes()
        except OSError:
            return None  # vanished between listing and reading: gone
        digest = hashlib.sha256(data).hexdigest()
        if previous is not None and previous.digest == digest:
            return _FileState(signature, digest, previous.objects, previous.problems)
        rel = str(path.relative_to(self.directory))
        try:
            parsed = parse_manifest(data.decode("utf-8"), rel)
            problems = parsed.problems
            objects = parsed.objects
        except UnicodeDecodeError as err:
            problems = (ManifestProblem(rel, 1, f"not UTF-8 text: {err}", fatal=True),)
            objects = ()
        for problem in problems:
            logger.warning("manifest %s", problem)
        if any(p.fatal for p in problems):
            kept = previous.objects if previous is not None else ()
            if kept:
                logger.warning("%s: keeping its %d last good objects until it is fixed", rel, len(kept))
            objects = kept
        return _FileState(signature, digest, objects, tuple(problems))

    def _merge(self) -> dict[ObjectKey, dict[str, Any]]:
        merged: dict[ObjectKey, dict[str, Any]] = {}
        origin: dict[ObjectKey, str] = {}
        problems = []
        for path, state in self._files.items():
            rel = str(path.relative_to(self.directory))
            for line, obj in state.objects:
                key = object_key(obj, Kind(obj["kind"]))
                if key in merged:
                    problems.append(f"{rel}:{line}: {key} is already defined in {origin[key]}; ignored")
                    continue
                merged[key] = obj
                origin[key] = f"{rel}:{line}"
        for key in list(merged):
            if kind_info(key.kind).namespaced:
                ns_key = ObjectKey(Kind.NAMESPACE, "", key.namespace)
                if ns_key not in merged:
                    merged[ns_key] = implicit_namespace(key.namespace)
        if tuple(problems) != self._merge_problems:
            for problem in problems:
                logger.warning("manifest %s", problem)
        self._merge_problems = tuple(problems)
        return merged

    def _emit(self, merged: dict[ObjectKey, dict[str, Any]]) -> None:
        now = time.monotonic()
        added = sorted(merged.keys() - self._emitted.keys(), key=lambda k: (_KIND_ORDER[k.kind], k))
        changed = sorted(
            (k for k in merged.keys() & self._emitted.keys() if merged[k] != self._emitted[k]),
            key=lambda k: (_KIND_ORDER[k.kind], k),
        )
        # Namespaces last when deleting, first when adding, as a cluster would order them.
        removed = sorted(self._emitted.keys() - merged.keys(), key=lambda k: (-_KIND_ORDER[k.kind], k))
        for action, keys in ((Action.ADDED, added), (Action.MODIFIED, changed), (Action.DELETED, removed)):
            for key in keys:
                self._version += 1
                base = merged[key] if action is not Action.DELETED else self._emitted[key]
                obj = {**base, "metadata": {**base["metadata"], "resourceVersion": str(self._version)}}
                self._sink(ObjectEvent(action, key.kind, key.namespace, key.name, obj, source_time=now))
        self._emitted = {k: _without_version(v) for k, v in merged.items()}


def _raise(err: OSError) -> None:
    raise err
