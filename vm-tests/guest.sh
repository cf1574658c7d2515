#!/usr/bin/env bash
# Runs INSIDE a virtme-ng guest (started by vm-tests/run.sh): prepares the guest, then runs the kernel
# suites with pytest and leaves JUnit XML, the pytest log and the exit code in the read-write results dir.
#
# Usage: guest.sh <label> <results dir> <unpacked kernel root> [test path or node id ...]
# Without tests named, the whole suite runs (tests/datapath and vm-tests).
# The guest's root is the host's `/` read-only (tmpfs/overlays on /tmp, /run, /var, /lib/modules), so
# nothing may be written outside the results dir except to those scratch mounts.
# The whole script is one function, read by bash before it runs: editing this file on the host while a
# guest runs it (the guest sees the host's files live) must not change what the guest executes.
set -uo pipefail

say() { printf '[guest %s] %s\n' "${label:-?}" "$*"; }

# virtme-ng's 9p root has no cache: every stat and open is a round trip through the emulated CPU.
# run.sh exports `/` a second time (tag mafast); mounted read-only with cache=loose and bound over the
# trees the suite reads (/usr, the repository, the kernel's headers), Python and BCC start 2-3x faster.
# Nothing under those trees changes during a run. Without the export the suite still runs, only slower.
use_cached_root() {
  local fast=/run/meshagent-fastroot dir
  mkdir -p "$fast"
  if ! mount -t 9p -o ro,trans=virtio,version=9p2000.L,access=any,msize=524288,cache=loose mafast "$fast" \
    2>/dev/null; then
    say "no cached export of / (tag mafast): running on the uncached root"
    return 0
  fi
  for dir in "$@"; do
    mount --bind "$fast$dir" "$dir" || say "cannot bind the cached $dir"
  done
  # Binding /usr hid virtme-ng's tmpfs on /usr/lib/modules (/lib is a link to usr/lib) and showed the
  # host's modules directories instead: put an empty tmpfs back.
  mount -t tmpfs none /usr/lib/modules || say "cannot mount a tmpfs on /usr/lib/modules"
}

main() {
  local label=$1 out=$2 kroot=$3 repo_root release moddir rc suites dir mod why
  shift 3
  repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
  release=$(uname -r)

  # First sign of life: run.sh tells "guest did not come up" from "suite timed out" by this file.
  echo "$release" >"$out/started"

  use_cached_root /usr "$repo_root" "$kroot"

  # /lib/modules is an empty tmpfs here; make the unpacked modules (with the build/source header links
  # that BCC needs) visible under this kernel's release. A host directory of the same release (the host
  # may have Debian's 6.1 headers linked there) must not be used: it has no modules.
  moddir=/lib/modules/$release
  ln -sfn "$kroot/lib/modules/$release" "$moddir" || say "cannot link $moddir"
  if [ ! -e "$moddir/modules.dep" ] || [ ! -e "$moddir/build/include" ]; then
    # Without modules and headers nothing below can work: fail as infrastructure, not as 40 test failures.
    why="modules or headers of $release not visible at $moddir (-> $(readlink "$moddir"));"
    why+=" a kernel cache under /var/cache or /var/tmp is hidden in the guest"
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
  # Under TCG everything runs ten times slower: the generated-policy suite and the UDP spray are scaled
  # down here (what differs between kernels is the same at any size; the host runs them in full).
  export MESHAGENT_FUZZ_EXAMPLES=0.02 MESHAGENT_SPRAY_TUPLES=30000
  say "kernel $release, running pytest"
  local socklb_ipv6=(
    "tests/socklb/test_ipv6.py::test_tcp_to_an_ipv6_cluster_ip_reaches_a_backend_and_the_peer_is_the_service"
    "tests/socklb/test_ipv6.py::test_udp_connected_and_unconnected_through_an_ipv6_vip"
    "tests/socklb/test_ipv6.py::test_an_ipv4_service_through_v4_mapped_addresses_on_an_ipv6_socket"
  )
  # Every suite that must hold on every kernel; tests/datapath is the privileged datapath suite.
  suites=("$@")
  if [ ${#suites[@]} -eq 0 ]; then
    for dir in tests/datapath vm-tests; do
      [ -d "$dir" ] && suites+=("$dir")
    done
    # The IPv6 socket hooks (connect6, sendmsg6, recvmsg6, getpeername6) differ more between kernels
    # than the IPv4 ones the cross-node test covers: a few of their tests, one compile of sock_lb.c.
    suites+=("${socklb_ipv6[@]}")
  fi
  # BCC 0.26 warns about str arguments with the whole C source in the message: keep the log readable.
  .venv/bin/python -m pytest -p no:cacheprovider -W "ignore:not a bytes object:DeprecationWarning" \
    --junitxml="$out/junit.xml" -o junit_suite_name="$label" -o junit_family=xunit2 \
    "${suites[@]}" 2>&1 | tee "$out/pytest.log"
  rc=${PIPESTATUS[0]}
  echo "$rc" >"$out/rc"
  say "pytest exit code $rc"
  exit "$rc"
}

main "$@"
exit $?
