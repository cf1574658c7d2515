"""The agent's side of compiling in a short-lived process (compile_child.py): starts it, receives the
descriptors of the loaded programs and of every map, and raises our errors when it fails. The agent then
reaches the maps through the bpf syscall (libbpf), never through BCC, so no compiler stays in it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshagent.datapath.errors import CompileError, DatapathError, LoadError
from meshagent.datapath.loader import Capacities

# Descriptors one answer may carry: the two programs and the maps, with room for maps yet to come.
_MAX_DESCRIPTORS = 64


@dataclass
class LoadedObjects:
    """Descriptors of the loaded programs and of the maps, by name; ours to close."""

    programs: dict[str, int] = field(default_factory=dict)
    maps: dict[str, int] = field(default_factory=dict)

    def map_fd(self, name: str) -> int:
        try:
            return self.maps[name]
        except KeyError:
            raise DatapathError(f"the compiled object has no map {name}") from None

    def close(self) -> None:
        for fd in [*self.programs.values(), *self.maps.values()]:
            os.close(fd)
        self.programs.clear()
        self.maps.clear()


def load_in_child(
    *, pin_dir: Path, capacities: Capacities, extra_cflags: tuple[str, ...] = ()
) -> LoadedObjects:
    """Compiles and loads the endpoint programs in a process of their own (BCC stays the compiler);
    returns their descriptors and the maps'. The child's own messages go to our stderr."""
    request = json.dumps(
        {
            "pin_dir": str(pin_dir),
            "capacities": dataclasses.asdict(capacities),
            "extra_cflags": list(extra_cflags),
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
    )
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # A file, not a pipe, for its error report: a long compiler log must not block it while we wait on
    # the socket.
    with ours, tempfile.TemporaryFile() as report:
        with theirs:
            child = subprocess.Popen(
                [sys.executable, "-m", "meshagent.datapath.compile_child", str(theirs.fileno()), request],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=report,
            )
        try:
            header, fds, _flags, _address = socket.recv_fds(ours, 1 << 16, _MAX_DESCRIPTORS)
            if header:
                ours.sendall(b"k")
        finally:
            code = child.wait()
        if header:
            return _objects(header, fds)
        report.seek(0)
        raise _failure(report.read().decode(errors="replace"), code)


def _log_as_ours(records: list[dict[str, Any]]) -> None:
    """What the compile process logged, logged by us under the same logger names and levels."""
    for record in records:
        logging.getLogger(str(record["logger"])).log(int(record["level"]), "%s", record["msg"])


def _objects(header: bytes, fds: list[int]) -> LoadedObjects:
    names = json.loads(header)
    _log_as_ours(names.get("logs", []))
    programs, maps = names["programs"], names["maps"]
    if len(fds) != len(programs) + len(maps):
        for fd in fds:
            os.close(fd)
        wanted = len(programs) + len(maps)
        raise DatapathError(f"the compile process sent {len(fds)} descriptors for {wanted} objects")
    return LoadedObjects(
        programs=dict(zip(programs, fds[: len(programs)], strict=True)),
        maps=dict(zip(maps, fds[len(programs) :], strict=True)),
    )


def _failure(report: str, code: int) -> DatapathError:
    try:
        answer = json.loads(report)
    except json.JSONDecodeError:
        return DatapathError(f"the compile process failed (exit status {code}; its messages are in our log)")
    _log_as_ours(answer.get("logs", []))
    kind, message, log = answer.get("error"), str(answer.get("message", "")), str(answer.get("log", ""))
    if kind == "compile":
        return CompileError(message, log=log)
    if kind == "load":
        return LoadError(message, log=log)
    return DatapathError(message)
