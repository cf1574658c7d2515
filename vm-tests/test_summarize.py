"""The matrix's verdict (vm-tests/summarize.py) from per-guest results directories."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import summarize

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="k" tests="5" failures="1" errors="1" skipped="1" time="12.5">
<testcase classname="a" name="ok1"/>
<testcase classname="a" name="ok2"/>
<testcase classname="a" name="bad"><failure message="boom"/></testcase>
<testcase classname="a" name="teardown"><error message="fixture"/></testcase>
<testcase classname="a" name="skip"><skipped message="no root"/></testcase>
</testsuite></testsuites>
"""

ALL_PASS = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="k"><testcase classname="a" name="ok"/></testsuite></testsuites>
"""


def _guest(tmp_path: Path, name: str, **files: str) -> Path:
    out = tmp_path / name
    out.mkdir()
    for filename, text in files.items():
        # keyword arguments cannot hold a dash: vng_rc stands for the file vng-rc
        (out / ("vng-rc" if filename == "vng_rc" else filename)).write_text(text)
    return out


def test_counts_by_outcome(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    assert summarize.count_junit(path) == summarize.JUnitCounts(passed=2, failed=2, skipped=1, seconds=12.5)


def test_failing_kernel_is_not_ok(tmp_path: Path) -> None:
    out = _guest(tmp_path, "6.1", started="6.1", rc="1", vng_rc="1", **{"junit.xml": JUNIT})
    verdict = summarize.judge(out, timeout_s=60)
    assert (verdict.passed, verdict.failed, verdict.skipped, verdict.ok) == (2, 2, 1, False)


def test_guest_that_never_came_up_counts_as_a_failure(tmp_path: Path) -> None:
    out = _guest(tmp_path, "6.12", vng_rc="124")
    verdict = summarize.judge(out, timeout_s=60)
    assert not verdict.ok
    assert verdict.failed == 1
    assert "did not come up within its 60s limit" in verdict.note


def test_guest_ended_by_the_boot_watchdog(tmp_path: Path) -> None:
    out = _guest(tmp_path, "6.1", vng_rc="143", **{"boot-timeout": "300"})
    verdict = summarize.judge(out, timeout_s=1500)
    assert not verdict.ok
    assert verdict.failed == 1
    assert "did not come up within its 300s boot limit" in verdict.note


def test_suite_cut_off_by_the_limit_is_reported_as_such(tmp_path: Path) -> None:
    out = _guest(tmp_path, "6.12", started="6.12", vng_rc="124")
    verdict = summarize.judge(out, timeout_s=60)
    assert not verdict.ok
    assert "did not finish within its 60s limit" in verdict.note


def test_guest_setup_error_is_quoted(tmp_path: Path) -> None:
    out = _guest(tmp_path, "6.1", started="6.1", error="modules not visible", vng_rc="3")
    verdict = summarize.judge(out, timeout_s=60)
    assert not verdict.ok
    assert "modules not visible" in verdict.note


def test_kernel_that_ran_no_test_is_not_ok(tmp_path: Path) -> None:
    empty = '<?xml version="1.0"?><testsuites><testsuite name="k"/></testsuites>'
    out = _guest(tmp_path, "6.1", started="6.1", rc="5", vng_rc="5", **{"junit.xml": empty})
    verdict = summarize.judge(out, timeout_s=60)
    assert not verdict.ok
    assert verdict.failed == 1


def test_closing_line_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _guest(tmp_path, "6.1", started="6.1", rc="0", vng_rc="0", **{"junit.xml": ALL_PASS})
    bad = _guest(tmp_path, "6.12", started="6.12", rc="1", vng_rc="1", **{"junit.xml": JUNIT})
    assert summarize.main([str(good)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 passed, 0 failed"
    assert summarize.main([str(good), str(bad)]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, \d+ failed", last)
    assert last == "3 passed, 2 failed"
