"""The short-lived process that compiles and loads the endpoint programs with BCC and hands their
descriptors (programs and every map, pinned ones opened or created under the pin directory) to the agent
over a Unix socket, then exits. LLVM and clang, which BCC's compile leaves resident (60 MiB mapped by
loading BCC's library, about 75 MiB more after a compile), so live only as long as this process.

    python -m meshagent.datapath.compile_child <socket fd> <request JSON>

On success it sends one message: the JSON {"programs": [names], "maps": [names], "logs": [records]} with
the descriptors in that order, and waits for one byte of acknowledgement. On failure it writes {"error":
kind, "message", "log", "logs"} to stdout and exits 1 (see compiled.py, the agent's side). "logs" holds
what this process logged at the agent's level or above, for the agent to log as its own: the agent's
format and destination (an operator reads which kernel headers were compiled against there).
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from meshagent.datapath.errors import CompileError, DatapathError, LoadError
from meshagent.datapath.loader import PROGRAM_FROM_ENDPOINT, PROGRAM_TO_ENDPOINT, Capacities, load


def map_descriptors(bpf: Any) -> dict[str, int]:
    """Every map of the compiled object, by name (libbcc's bcc_common.h API, which BCC's Python module
    does not declare)."""
    import ctypes

    from bcc.libbcc import lib

    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.bpf_table_fd_id.restype = ctypes.c_int
    out = {}
    for index in range(lib.bpf_num_tables(bpf.module)):
        name = lib.bpf_table_name(bpf.module, index).decode()
        out[name] = int(lib.bpf_table_fd_id(bpf.module, index))
    return out


class KeptRecords(logging.Handler):
    """Keeps this process's log records for the agent (name, level and message)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"logger": record.name, "level": record.levelno, "msg": record.getMessage()})


def main(argv: list[str]) -> int:
    channel = socket.socket(fileno=int(argv[0]))
    request = json.loads(argv[1])
    kept = KeptRecords()
    root = logging.getLogger()
    root.addHandler(kept)
    root.setLevel(int(request.get("log_level", logging.INFO)))
    try:
        loaded = load(
            pin_dir=Path(request["pin_dir"]),
            capacities=Capacities(**request["capacities"]),
            extra_cflags=tuple(request.get("extra_cflags", ())),
        )
    except DatapathError as err:
        kinds = ((CompileError, "compile"), (LoadError, "load"))
        kind = next((name for cls, name in kinds if isinstance(err, cls)), "other")
        log = getattr(err, "log", "")
        message = str(err)[: -len(log) - 1] if log else str(err)  # our errors append the log to it
        answer = {"error": kind, "message": message, "log": log, "logs": kept.records}
        sys.stdout.write(json.dumps(answer))
        return 1
    maps = map_descriptors(loaded.bpf)
    programs = {PROGRAM_FROM_ENDPOINT: loaded.from_endpoint.fd, PROGRAM_TO_ENDPOINT: loaded.to_endpoint.fd}
    header = json.dumps({"programs": list(programs), "maps": list(maps), "logs": kept.records}).encode()
    socket.send_fds(channel, [header], [*programs.values(), *maps.values()])
    channel.recv(1)  # the agent holds its copies: ours may go
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
