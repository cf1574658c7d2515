#!/usr/bin/env bash
# Runs INSIDE a virtme-ng guest (started by vm-tests/run.sh): prepares the guest, then runs the kernel
# suites with pytest and leaves JUnit XML, the pytest log and the exit code in the read-write results dir.
#
# Usage: guest.sh <label> <results dir> <unpacked kernel root>
# The guest's root is the host's `/` read-only (tmpfs/overlays on /tmp, /run, /var, /lib/modules), so
# nothing may be written outside the results dir except to those scratch mounts.
set -uo pipefail

label=$1
out=$2
kroot=$3
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
release=$(uname -r)

# First sign of life: run.sh tells "guest did not come up" from "suite timed out" by this file.
echo "$release" >"$out/started"

say() { printf '[guest %s] %s\n' "$label" "$*"; }

# virtme-ng mounts an empty tmpfs on /lib/modules; make the unpacked modules (with the build/source
# header links that BCC needs) visible under this kernel's release.
moddir=/lib/modules/$release
if [ ! -e "$moddir/build" ]; then
  mkdir -p /lib/modules 2>/dev/null || true
  ln -sfn "$kroot/lib/modules/$release" "$moddir" || say "cannot link $moddir"
fi
if [ ! -e "$moddir/modules.dep" ] || [ ! -e "$moddir/build/include" ]; then
  # Without modules and headers nothing below can work: fail as infrastructure, not as 40 test failures.
  why="modules or headers of $release not visible at $moddir (-> $(readlink "$moddir")); is the cache under a path the guest hides?"
  say "$why"
  echo "$why" >"$out/error"
  exit 3
fi
# Debian's kernels build these as modules; load them up front so a missing one is reported here,
# not as an obscure netlink error in a test. Autoloading would also work, but is slower to diagnose.
for mod in veth sch_ingress cls_bpf; do
  modprobe -q "$mod" || say "modprobe $mod failed"
done
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || say "cannot mount bpffs"
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || say "cannot mount tracefs"
mkdir -p /run/netns

cd "$repo_root" || exit 2
export PYTHONDONTWRITEBYTECODE=1 HOME=/tmp MESHAGENT_KERNEL_LABEL="$label"
say "kernel $release, running pytest"
# Every suite that must hold on every kernel; tests/datapath is the privileged datapath suite.
suites=()
for dir in tests/datapath vm-tests; do
  [ -d "$dir" ] && suites+=("$dir")
done
.venv/bin/python -m pytest -p no:cacheprovider \
  --junitxml="$out/junit.xml" -o junit_suite_name="$label" -o junit_family=xunit2 \
  "${suites[@]}" 2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
echo "$rc" >"$out/rc"
say "pytest exit code $rc"
exit "$rc"
