"""Runs every benchmark in bench/ one after the other (`make bench`; `make bench QUICK=1` for short runs).

A benchmark is any bench/*.py with a main() that accepts --quick; each prints its own BENCH lines.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"run_all.py"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("names", nargs="*", help="only these benchmarks (file stems)")
    args = parser.parse_args()
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in NOT_BENCHMARKS)
    if args.names:
        scripts = [p for p in scripts if p.stem in args.names]
    failed = []
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        start = time.monotonic()
        result = subprocess.run([sys.executable, str(script), *(["--quick"] if args.quick else [])])
        print(f"== {script.stem}: exit {result.returncode} in {time.monotonic() - start:.0f} s", flush=True)
        if result.returncode != 0:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
