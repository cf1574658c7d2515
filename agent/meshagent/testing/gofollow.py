"""Builds and runs bench/tools/flowfollow, a grpc-go client of the Observer API.

It proves that a Go client (what the `hubble` CLI is) works against our server, and it is the fast
following client of the throughput benchmarks: Python grpcio clients top out near 13k messages/s.

The Go toolchain and libraries come from Debian (golang-go, golang-google-grpc-dev,
golang-google-protobuf-dev; scripts/install.sh installs them). No module proxy is reachable, so the
program is built in GOPATH mode against /usr/share/gocode, once per source version, into /var/tmp.

Output protocol of `flowfollow getflows`: a line `ready` once the request is sent, with `--progress`
a line `flows N` after each response, then one JSON line (see FLOWS_KEYS). `flowfollow status` prints
one JSON line (see STATUS_KEYS). Exit code 0 when the status is OK, 1 on a gRPC error (the JSON still
says which), 2 on bad usage.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
SOURCE_DIR = REPO / "bench" / "tools" / "flowfollow"
GOCODE = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put their sources
CACHE_ROOT = Path("/var/tmp")
INSTALL_HINT = (
    "run `make install` (scripts/install.sh installs golang-go, "
    "golang-google-grpc-dev and golang-google-protobuf-dev)"
)

# What `getflows` and `status` print (a test checks the program still prints all of them).
FLOWS_KEYS = frozenset(
    {
        "flows",  # GetFlowsResponse messages with a flow
        "lost",  # sum of lost_events.num_events_lost
        "seconds",  # time from the first to the last response received
        "status",  # "OK" or the gRPC code name, e.g. "INVALID_ARGUMENT"
        "message",  # the gRPC status message
        "bytes",  # total size of the response messages
        "first_dport",  # destination port (TCP, UDP or SCTP) of the first/last flow, -1 other L4, null none
        "last_dport",
        "responses",  # all GetFlowsResponse messages (flows, lost events, node status)
        "end",  # "eof", "stop-dport", "signal" (SIGINT/SIGTERM: counts kept, status OK) or "error"
        "cpu_seconds",  # the client's own user+system CPU time
    }
)
STATUS_KEYS = frozenset({"num_flows", "max_flows", "seen_flows", "version", "status", "message"})

# Packages -> a file each one installs: what to check, and what to name when it is missing.
_PACKAGE_FILES = {
    "golang-google-grpc-dev": GOCODE / "src/google.golang.org/grpc/stream.go",
    "golang-google-protobuf-dev": GOCODE / "src/google.golang.org/protobuf/encoding/protowire/wire.go",
}


class GoFollowerUnavailable(RuntimeError):
    """The Go client cannot be built here; the message says why and how to fix it."""


def go_binary() -> Path:
    found = shutil.which("go") or ("/usr/lib/go/bin/go" if Path("/usr/lib/go/bin/go").exists() else None)
    if found is None:
        raise GoFollowerUnavailable(f"the Go toolchain is not installed: {INSTALL_HINT}")
    return Path(found)


def _source_digest(go: Path) -> str:
    """Changes with any .go file of the program and with the toolchain version."""
    h = hashlib.sha256()
    h.update(subprocess.run([str(go), "version"], capture_output=True, text=True, check=True).stdout.encode())
    for path in sorted(SOURCE_DIR.glob("*.go")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _build_env(cache_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",  # GOPATH mode: Debian ships sources, not a module cache
        GOPATH=str(GOCODE),
        GOCACHE=str(cache_root / "meshagent-flowfollow-gocache"),
        GOPROXY="off",  # never try the network
        GOFLAGS="",
        CGO_ENABLED="0",  # a static binary; no C compiler needed
    )
    return env


def build(cache_root: Path = CACHE_ROOT) -> Path:
    """The flowfollow binary, built on first use and again whenever its source changes.

    Raises GoFollowerUnavailable when go or the Debian library packages are missing, or the build fails.
    """
    go = go_binary()
    missing = [pkg for pkg, marker in _PACKAGE_FILES.items() if not marker.exists()]
    if missing:
        raise GoFollowerUnavailable(f"missing Debian packages {' '.join(missing)}: {INSTALL_HINT}")
    out_dir = cache_root / f"meshagent-flowfollow-{_source_digest(go)}"
    binary = out_dir / "flowfollow"
    if binary.exists():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent builders never see a half-written binary.
    partial = out_dir / f"flowfollow.{os.getpid()}.partial"
    proc = subprocess.run(
        [str(go), "build", "-trimpath", "-o", str(partial), "."],
        cwd=SOURCE_DIR,
        env=_build_env(cache_root),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise GoFollowerUnavailable(f"go build of {SOURCE_DIR} failed:\n{proc.stderr.strip()}")
    partial.replace(binary)
    return binary


def command(binary: Path, subcommand: str, address: str, *args: str) -> list[str]:
    """argv for `flowfollow SUBCOMMAND --addr ADDRESS ARGS...` (ADDRESS: unix:///path or host:port)."""
    return [str(binary), subcommand, "--addr", address, *args]


@dataclass
class Result:
    returncode: int
    ready: bool  # `getflows` printed `ready` (the request was sent)
    result: dict[str, Any]  # the final JSON line
    stderr: str


def _parse(returncode: int, stdout: str, stderr: str) -> Result:
    lines = stdout.splitlines()
    ready = bool(lines) and lines[0] == "ready"
    try:
        parsed = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise RuntimeError(f"flowfollow printed no result (rc={returncode}): {stdout!r} {stderr!r}")
    return Result(returncode, ready, parsed, stderr)


def run(binary: Path, subcommand: str, address: str, *args: str, timeout_s: float = 30.0) -> Result:
    """Runs one call to completion and parses what it printed."""
    proc = subprocess.run(
        command(binary, subcommand, address, *args), capture_output=True, text=True, timeout=timeout_s
    )
    return _parse(proc.returncode, proc.stdout, proc.stderr)


class Follower:
    """A `getflows` client running in the background, e.g. `--follow --stop-at-dport P`.

    Use wait_ready() before producing flows, then result() (or stop() to end an open-ended follow).
    """

    def __init__(self, binary: Path, address: str, *args: str) -> None:
        self._proc = subprocess.Popen(
            command(binary, "getflows", address, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # raw pipe: select() and os.read() see exactly what the program wrote
        )
        self._out = b""

    def _read_until(self, done: Callable[[bytes], bool], timeout_s: float, what: str) -> None:
        """Reads the program's output until done(output so far) or its end; raises on timeout."""
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while not done(self._out):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"flowfollow: {what} not seen after {timeout_s}s: {self._out!r}")
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                self._out += chunk

    def wait_flows(self, count: int, timeout_s: float = 10.0) -> None:
        """With --progress: returns once the client has received `count` flows."""

        def received(out: bytes) -> bool:
            lines = out.decode().splitlines()
            return any(line.startswith("flows ") and int(line.split()[1]) >= count for line in lines)

        self._read_until(received, timeout_s, f"{count} flows")

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Returns once the client has sent its request; raises if it ends or times out first."""
        assert self._proc.stdout is not None
        self._read_until(lambda out: b"\n" in out, timeout_s, "ready")
        if not self._out.startswith(b"ready\n"):
            rc = self._proc.wait()
            rest = self._proc.stdout.read() or b""
            raise RuntimeError(f"flowfollow ended before ready (rc={rc}): {(self._out + rest).decode()!r}")

    def result(self, timeout_s: float = 30.0) -> Result:
        """Waits for the program to end by itself and parses its output."""
        try:
            out, err = self._proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, err = self._proc.communicate()
            raise TimeoutError(f"flowfollow still running after {timeout_s}s: {err.decode()!r}") from None
        return _parse(self._proc.returncode, (self._out + out).decode(), err.decode())

    def stop(self, timeout_s: float = 10.0) -> Result:
        """Ends a follow with SIGTERM; the program reports its counts with end="signal"."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        return self.result(timeout_s)

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
