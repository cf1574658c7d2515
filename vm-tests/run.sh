#!/usr/bin/env bash
# The kernel matrix (`make vm-test`): boots one virtme-ng guest per Debian kernel, in parallel, runs the
# kernel suites in each (vm-tests/guest.sh) and prints one combined closing line `N passed, N failed`.
# Exit status is non-zero when any kernel has a failing test or its guest does not finish in time.
#
# Environment: MESHAGENT_VM_CACHE (default /var/lib/meshagent/vm), MESHAGENT_VM_KERNELS (Debian meta
# packages, see scripts/vm-setup.sh), MESHAGENT_VM_TIMEOUT (seconds per guest, default 4200),
# MESHAGENT_VM_BOOT_TIMEOUT (seconds for a guest to reach our script, default 300),
# MESHAGENT_VM_RESULTS (default $MESHAGENT_VM_CACHE/results), MESHAGENT_VM_TESTS (pytest paths or node ids,
# space-separated, to run instead of the whole suite; for working on one test).
# Everything is inside main(), which bash reads whole before running it: editing this file during a run
# (the matrix takes many minutes) must not change what the running script executes.
set -uo pipefail

main() {
  repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cd "$repo_root"
  export MESHAGENT_VM_CACHE=${MESHAGENT_VM_CACHE:-/var/lib/meshagent/vm}
  # The suite grows with every datapath feature; under TCG one test costs 10-40 s. Two guests run side by
  # side, so the matrix takes about one guest's time: keep it within CI's budget (90 min, `make test` ~20).
  # The two-node tests (three agent starts, each compiling its programs) add 4-10 min per guest, the
  # WireGuard tests (three agent starts, three nodes) up to 28 min on a busy machine.
  guest_timeout=${MESHAGENT_VM_TIMEOUT:-4200}
  boot_timeout=${MESHAGENT_VM_BOOT_TIMEOUT:-300}
  results=${MESHAGENT_VM_RESULTS:-$MESHAGENT_VM_CACHE/results}
  selected=${MESHAGENT_VM_TESTS:-}
  # The selection travels on the guest's command line: keep it to words a shell passes through unchanged.
  plain_words='^[][A-Za-z0-9_./:= -]+$'
  if [[ -n "$selected" && ! "$selected" =~ $plain_words ]]; then
    printf '[vm-test] MESHAGENT_VM_TESTS may hold only test paths and node ids: %s\n' "$selected" >&2
    exit 2
  fi

  log() { printf '[vm-test] %s\n' "$*"; }

  # One matrix at a time per cache: a second run would unpack over the first's kernels and delete its
  # results. The lock is held on fd 9 until this script and its guests end.
  mkdir -p "$MESHAGENT_VM_CACHE"
  exec 9>"$MESHAGENT_VM_CACHE/.lock"
  if ! flock -n 9; then
    log "another vm-test is running (lock $MESHAGENT_VM_CACHE/.lock); waiting for it"
    flock 9
  fi

  bash scripts/vm-setup.sh || { log "set-up failed"; exit 2; }
  [ -x .venv/bin/python ] || { log "no .venv: run 'make install' first"; exit 2; }

  export PATH=$MESHAGENT_VM_CACHE/vng-venv/bin:$PATH
  rm -rf "$results"
  mkdir -p "$results"

  # Drivers the guests never use: keeping them from probing roughly halves boot time under TCG.
  blacklist="modprobe.blacklist=floppy,parport,parport_pc,ppdev,snd_pcsp,pcspkr,joydev,psmouse,serio_raw,bochs,drm"

  # A second read-only export of `/` that vm-tests/guest.sh mounts with cache=loose (vng's own has no cache).
  cached_root="-fsdev local,id=mafast,path=/,security_model=none,readonly=on,multidevs=remap"
  cached_root+=" -device virtio-9p-pci,fsdev=mafast,mount_tag=mafast"

  start=$(date +%s)
  pids=()
  labels=()
  while IFS=$'\t' read -r meta release vmlinuz kroot; do
    [ -n "$release" ] || continue
    out=$results/$release
    mkdir -p "$out"
    log "booting $release ($meta), limit ${guest_timeout}s"
    # timeout also ends qemu; </dev/null and the pipe through cat keep vng's console output intact
    # (redirecting vng straight to a file garbles it). 1 vCPU each so two guests share 2 host cores.
    # The `timeout` process records its pid (exec keeps it) so the boot watchdog below can end it.
    (
      bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$out/guest.pid" \
        timeout --kill-after=30 "$guest_timeout" vng --run "$vmlinuz" \
        --disable-kvm --force-9p --cpus 1 -m 2G --name "vm-$release" \
        --rwdir "$out" --cwd "$repo_root" --append "$blacklist" "--qemu-opts=$cached_root" \
        --exec "bash $repo_root/vm-tests/guest.sh $release $out $kroot $selected" </dev/null 2>&1 | cat >"$out/console.log"
      echo "${PIPESTATUS[0]}" >"$out/vng-rc"
    ) &
    pids+=($!)
    # A guest that has not reached guest.sh within the boot limit will not: end it now rather than
    # after the whole suite limit.
    (
      waited=0
      while [ "$waited" -lt "$boot_timeout" ] && [ ! -e "$out/started" ] && [ ! -e "$out/vng-rc" ]; do
        sleep 5
        waited=$((waited + 5))
      done
      if [ ! -e "$out/started" ] && [ ! -e "$out/vng-rc" ] && [ -s "$out/guest.pid" ]; then
        echo "$boot_timeout" >"$out/boot-timeout"
        kill -TERM "$(cat "$out/guest.pid")" 2>/dev/null
      fi
    ) &
    pids+=($!)
    labels+=("$release")
  done <"$MESHAGENT_VM_CACHE/kernels.tsv"

  [ ${#pids[@]} -gt 0 ] || { log "no kernels listed in $MESHAGENT_VM_CACHE/kernels.tsv"; exit 2; }
  for pid in "${pids[@]}"; do
    wait "$pid"
  done
  elapsed=$(($(date +%s) - start))

  for label in "${labels[@]}"; do
    out=$results/$label
    vng_rc=$(cat "$out/vng-rc" 2>/dev/null || echo "?")
    if [ -e "$out/boot-timeout" ]; then
      log "$label: guest did not come up within ${boot_timeout}s; last console lines:"
    elif [ "$vng_rc" = 124 ] || [ "$vng_rc" = 137 ]; then
      log "$label: guest hit its ${guest_timeout}s limit; last console lines:"
    elif [ ! -e "$out/rc" ]; then
      log "$label: guest ended (vng exit $vng_rc) without a pytest result; last console lines:"
    else
      continue
    fi
    tail -n 25 "$out/console.log" | sed "s/^/  [$label] /"
  done

  log "matrix wall time ${elapsed}s (results in $results)"
  exec .venv/bin/python vm-tests/summarize.py --timeout "$guest_timeout" "${labels[@]/#/$results/}"
}

main "$@"
exit $?
