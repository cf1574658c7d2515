"""The programs are compiled in a short-lived process: the agent keeps descriptors, not the compiler, and
a compile failure still reaches it as our error with the compiler's log."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.datapath.compiled import load_in_child
from meshagent.datapath.errors import CompileError
from meshagent.datapath.loader import PROGRAM_FROM_ENDPOINT, PROGRAM_TO_ENDPOINT, Capacities
from meshagent.datapath.maps import endpoints, ipcache

pytestmark = pytest.mark.kernel

# Loads a Datapath in a fresh interpreter and reports what the process holds afterwards.
_PROBE = """
import json, sys
from pathlib import Path
from meshagent.datapath.datapath import Datapath
datapath = Datapath(pin_dir=Path(sys.argv[1]))
datapath.load()
mapped = Path("/proc/self/maps").read_text()
print(json.dumps({
    "bcc_imported": any(name == "bcc" or name.startswith("bcc.") for name in sys.modules),
    "llvm_mapped": "libbcc" in mapped or "libLLVM" in mapped or "libclang" in mapped,
    "programs": sorted(datapath.program_fds()),
    "endpoints": len(datapath.endpoints_map),
}))
datapath.close()
"""


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = Path("/sys/fs/bpf") / f"meshagent-compile-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_agent_process_keeps_no_compiler(pin_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(pin_dir)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    held = json.loads(result.stdout.strip().splitlines()[-1])
    assert held == {
        "bcc_imported": False,
        "llvm_mapped": False,
        "programs": sorted([PROGRAM_FROM_ENDPOINT, PROGRAM_TO_ENDPOINT]),
        "endpoints": 0,
    }
    # The maps the child created are pinned where the next start adopts them (the layout's directory).
    assert [path.name for path in pin_dir.glob(f"*/{endpoints.MAP_NAME}")] == [endpoints.MAP_NAME]


def test_descriptors_cover_programs_and_every_map(pin_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    loaded = load_in_child(pin_dir=pin_dir, capacities=Capacities())
    # What the child logged is logged by the agent: which kernel headers it compiled against.
    compiled = [r for r in caplog.records if r.name == "meshagent.datapath.loader"]
    assert any(r.getMessage().startswith("compiled endpoint.c against ") for r in compiled), caplog.text
    try:
        assert set(loaded.programs) == {PROGRAM_FROM_ENDPOINT, PROGRAM_TO_ENDPOINT}
        assert {endpoints.MAP_NAME, ipcache.MAP_NAME, "ma_events"} <= set(loaded.maps)
        assert all(fd >= 0 for fd in [*loaded.programs.values(), *loaded.maps.values()])
    finally:
        loaded.close()
    assert loaded.maps == {} and loaded.programs == {}


def test_a_compile_failure_is_our_error_with_the_log(pin_dir: Path) -> None:
    with pytest.raises(CompileError) as caught:
        load_in_child(
            pin_dir=pin_dir, capacities=Capacities(), extra_cflags=("-include", "/nonexistent/missing.h")
        )
    assert "compiling endpoint.c failed" in str(caught.value)
    assert "missing.h" in caught.value.log
