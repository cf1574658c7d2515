"""Combine the kernel matrix's per-guest results into one verdict.

Each argument is a guest's results directory (written through virtme-ng's --rwdir by vm-tests/guest.sh):
`junit.xml` from pytest, `rc` with pytest's exit code, `started` once the guest ran our script, and
`error` when the guest's own set-up failed, `boot-timeout` when run.sh ended a guest that did not come up,
and `vng-rc` with the exit code of `timeout vng ...` (written
by vm-tests/run.sh on the host).

Prints one line per kernel, then the combined closing line `N passed, N failed` alone on the last line,
and exits 1 if any kernel failed a test, ran no test, or its guest did not finish within its limit.
A guest without results counts as one failed test, so the closing line never reads clean for a broken run.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

# `timeout` exits 124 when its limit is hit, 137 when it had to SIGKILL after --kill-after.
TIMEOUT_CODES = frozenset({124, 137})


@dataclass(frozen=True)
class KernelResult:
    label: str
    passed: int
    failed: int
    skipped: int
    ok: bool
    note: str


@dataclass(frozen=True)
class JUnitCounts:
    passed: int
    failed: int
    skipped: int
    seconds: float = 0.0


def count_junit(path: Path) -> JUnitCounts:
    """Count test cases by outcome; a case with a failure or an error (setup/teardown too) has failed."""
    root = ET.parse(path).getroot()
    passed = failed = skipped = 0
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            failed += 1
        elif "skipped" in tags:
            skipped += 1
        else:
            passed += 1
    seconds = sum(float(suite.get("time", 0) or 0) for suite in root.iter("testsuite"))
    return JUnitCounts(passed=passed, failed=failed, skipped=skipped, seconds=seconds)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def judge(results_dir: Path, *, timeout_s: int) -> KernelResult:
    """Turn one guest's results directory into a verdict with a human-readable note."""
    label = results_dir.name
    vng_rc = _read_int(results_dir / "vng-rc")
    pytest_rc = _read_int(results_dir / "rc")
    junit = results_dir / "junit.xml"
    if pytest_rc is None or not junit.exists():
        guest_error = results_dir / "error"
        boot_limit = results_dir / "boot-timeout"
        if guest_error.exists():
            why = f"guest set-up failed: {guest_error.read_text().strip()}"
        elif boot_limit.exists():
            why = f"guest did not come up within its {boot_limit.read_text().strip()}s boot limit"
        elif not (results_dir / "started").exists():
            why = "guest did not come up"
        elif vng_rc in TIMEOUT_CODES:
            why = "guest came up but the suite did not finish"
        else:
            why = "guest ended without a pytest result"
        if vng_rc in TIMEOUT_CODES:
            why += f" within its {timeout_s}s limit"
        return KernelResult(label, 0, 1, 0, ok=False, note=f"{why} (vng exit {vng_rc}); see console.log")
    try:
        counts = count_junit(junit)
    except ET.ParseError as err:
        return KernelResult(label, 0, 1, 0, ok=False, note=f"unreadable junit.xml: {err}")
    total = counts.passed + counts.failed + counts.skipped
    ok = pytest_rc == 0 and counts.failed == 0 and counts.passed > 0
    if total == 0 or counts.passed == 0:
        note = f"ran no passing test (pytest exit {pytest_rc})"
        # A kernel that ran nothing must not read as clean in the combined line.
        failed = max(counts.failed, 1)
        return KernelResult(label, counts.passed, failed, counts.skipped, ok=False, note=note)
    return KernelResult(
        label,
        counts.passed,
        counts.failed,
        counts.skipped,
        ok=ok,
        note=f"pytest exit {pytest_rc}, suite {counts.seconds:.0f}s",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="one results directory per kernel")
    parser.add_argument("--timeout", type=int, default=0, help="the per-guest limit, for messages")
    args = parser.parse_args(argv)
    verdicts = [judge(path, timeout_s=args.timeout) for path in args.results]
    for v in verdicts:
        state = "ok" if v.ok else "FAILED"
        print(
            f"[vm-test] {v.label}: {state}: {v.passed} passed, {v.failed} failed, "
            f"{v.skipped} skipped ({v.note})"
        )
    passed = sum(v.passed for v in verdicts)
    failed = sum(v.failed for v in verdicts)
    print(f"{passed} passed, {failed} failed")
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
