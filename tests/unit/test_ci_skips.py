"""Under CI a skipped kernel test fails (missing root or a missing kernel feature must not pass as
green); elsewhere it stays a skip. Checked by running pytest on a small suite with our conftest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = """
import pytest

@pytest.mark.kernel
def test_needs_a_feature():
    pytest.skip("the kernel lacks the feature")

def test_not_privileged():
    pytest.skip("no tool")

@pytest.mark.kernel
def test_runs():
    pass
"""
CONFTEST = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from tests.conftest import pytest_collection_modifyitems, pytest_runtest_makereport  # noqa: F401

def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: privileged")
"""


def run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_skipped_kernel_test_fails_under_ci(tmp_path: Path, ci: str) -> None:
    done = run_suite(tmp_path, ci)
    assert done.returncode == 1, done.stdout
    assert "FAILED" in done.stdout and "test_needs_a_feature" in done.stdout
    assert "may not be skipped under CI" in done.stdout and "the kernel lacks the feature" in done.stdout
    assert "1 failed, 1 passed, 1 skipped" in done.stdout  # only the kernel test's skip fails


def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path) -> None:
    done = run_suite(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 2 skipped" in done.stdout
