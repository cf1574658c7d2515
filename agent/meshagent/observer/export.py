"""Flow export to a JSON-lines file (GetFlowsResponse JSON, as `hubble observe -o jsonpb`), with size-based
rotation and a filter, for a SIEM or log shipper that has no gRPC client.

The exporter follows the ring on its own thread, so a slow disk never slows the datapath reader; if it
falls behind far enough to lose flows, it writes a `lost_events` line saying how many.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from google.protobuf import json_format

from meshagent.observer.filters import FlowMatcher
from meshagent.observer.listen import group_id
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.ring import FlowRing

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    path: Path
    max_bytes: int = 10 * 1024 * 1024  # rotate when the file would grow past this
    max_backups: int = 5  # path.1 (newest) .. path.N (oldest)
    group: str | None = None  # set: the files are 0640 and this group's; else owner-only (0600)
    whitelist: Sequence[pb.FlowFilter] = ()
    blacklist: Sequence[pb.FlowFilter] = ()

    def __post_init__(self) -> None:
        if self.max_bytes < 1024:
            raise ValueError("export max_bytes must be at least 1024")
        if self.max_backups < 0:
            raise ValueError("export max_backups must not be negative")


class RotatingWriter:
    """Appends lines to a file; before a line would push it past max_bytes, shifts path -> path.1 -> ...

    Flows name pods, their addresses and labels: the files are the owner's only (0600), or also readable
    by `gid` (0640), from the moment they exist, and an existing file is brought to that mode too."""

    def __init__(self, path: Path, *, max_bytes: int, max_backups: int, gid: int | None = None) -> None:
        self._path = path
        self._max = max_bytes
        self._backups = max_backups
        self._gid = gid
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = self._open()
        self._size = path.stat().st_size
        self.rotations = 0

    def _open(self) -> TextIO:
        mode = 0o600 if self._gid is None else 0o640
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            if self._gid is not None:
                os.fchown(fd, -1, self._gid)
            os.fchmod(fd, mode)
        except OSError:
            os.close(fd)
            raise
        return open(fd, "a", encoding="utf-8")  # the writer keeps it open until close()

    def write_line(self, line: str) -> None:
        data = line + "\n"
        n = len(data.encode())
        if self._size and self._size + n > self._max:
            self._rotate()
        self._fh.write(data)
        self._size += n

    def flush(self) -> None:
        self._fh.flush()

    def _rotate(self) -> None:
        self._fh.close()
        if self._backups == 0:
            self._path.unlink(missing_ok=True)
        else:
            for i in range(self._backups - 1, 0, -1):
                src = self._path.with_name(f"{self._path.name}.{i}")
                if src.exists():
                    os.replace(src, self._path.with_name(f"{self._path.name}.{i + 1}"))
            os.replace(self._path, self._path.with_name(f"{self._path.name}.1"))
        self._fh = self._open()
        self._size = 0
        self.rotations += 1

    def close(self) -> None:
        self._fh.close()


class FlowExporter:
    def __init__(self, ring: FlowRing, config: ExportConfig, *, node_name: str = "") -> None:
        self._ring = ring
        self._config = config
        self._matcher = FlowMatcher(config.whitelist, config.blacklist)  # raises FilterError early
        self._node_name = node_name
        gid = group_id(config.group) if config.group is not None else None
        self._writer = RotatingWriter(
            config.path, max_bytes=config.max_bytes, max_backups=config.max_backups, gid=gid
        )
        self._stop = threading.Event()
        self._seq = ring.next_seq  # export what arrives from now on
        self._thread = threading.Thread(target=self._run, name="flow-exporter", daemon=True)
        self.exported = 0
        self.lost = 0  # flows overwritten in the ring before the exporter read them
        self.write_errors = 0  # lines that could not be written (disk full, ...): counted, and logged

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Writes out everything already in the ring, then stops."""
        self._stop.set()
        self._ring.wake_all()
        self._thread.join(timeout=10)
        self._writer.close()

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._ring.wait_for(self._seq, 0.2)
            entries, self._seq, lost = self._ring.read_from(self._seq, limit=4096)
            if lost:
                self.lost += lost
                self._write(
                    opb.GetFlowsResponse(
                        lost_events=pb.LostEvent(source=pb.HUBBLE_RING_BUFFER, num_events_lost=lost),
                        node_name=self._node_name,
                    )
                )
            for e in entries:
                if e.flow is not None and self._matcher(e.flow):
                    self._write(
                        opb.GetFlowsResponse(flow=e.flow, node_name=e.flow.node_name, time=e.flow.time)
                    )
                    self.exported += 1
                elif e.lost is not None:
                    resp = opb.GetFlowsResponse(lost_events=e.lost, node_name=self._node_name)
                    resp.time.FromNanoseconds(e.time_ns)
                    self._write(resp)
            self._writer.flush()
            if stopping and not entries:
                return

    def _write(self, resp: opb.GetFlowsResponse) -> None:
        try:
            self._writer.write_line(json_format.MessageToJson(resp, indent=None))
        except OSError:
            self.write_errors += 1
            logger.exception("flow export to %s failed", self._config.path)
