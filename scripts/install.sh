#!/usr/bin/env bash
# Idempotent set-up of everything meshagent needs on a Debian 12 machine, from nothing.
# Safe to run again: every step checks before it acts. Must run as root (BPF, tc, netns).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

log() { printf '[install] %s\n' "$*"; }
warn() { printf '[install] WARNING: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "[install] must run as root (BPF programs, tc and network namespaces need it)" >&2
  exit 1
fi

apt_packages=(
  python3-bpfcc libbpfcc bpfcc-tools   # BCC from Debian (never the PyPI name 'bcc')
  python3-venv python3-dev
  iproute2 iperf3 bpftool netcat-openbsd iputils-ping procps util-linux iptables
  linux-headers-amd64 kmod
  # Go client of the Observer API (bench/tools/flowfollow), built offline in GOPATH mode from these sources
  golang-go golang-google-grpc-dev golang-google-protobuf-dev
  # `meshagent ui`: chromium and its driver run the service map's browser tests
  chromium chromium-driver
)
# npm installs the service map's pinned graph library; some Node.js builds ship npm themselves.
command -v npm >/dev/null || apt_packages+=(npm)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# BCC compiles against /lib/modules/$(uname -r)/{build,source}. Prefer headers that match the running
# kernel; when the distribution has none (our VMs run a custom kernel), link the newest Debian headers.
# Only UAPI structs are used by bpf/, so a mismatched header set is safe for us.
kver=$(uname -r)
moddir=/lib/modules/$kver
if [ ! -e "$moddir/build/include" ]; then
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
    log "installing linux-headers-$kver"
    apt-get install -y -qq "linux-headers-$kver" >/dev/null
  fi
fi
if [ ! -e "$moddir/build/include" ]; then
  arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common_dir=${arch_dir%-amd64}-common
  if [ -z "$arch_dir" ] || [ ! -d "$common_dir" ]; then
    echo "[install] no kernel headers found under /usr/src" >&2
    exit 1
  fi
  warn "no headers for kernel $kver; linking $arch_dir (only UAPI structs are used, so this is safe)"
  mkdir -p "$moddir"
  ln -sfn "$arch_dir" "$moddir/build"
  ln -sfn "$common_dir" "$moddir/source"
fi

# tracefs (tracepoints) and bpffs (pinned maps) are not mounted at boot here.
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# The venv comes from Debian's interpreter with system site packages so that `import bcc` works.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  log "creating .venv from /usr/bin/python3"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -e "$stamp" ]; then
  log "pip install -e .[test]"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# The service map's browser library (cytoscape), pinned by its lock file; `npm ci` only when it changed.
web=agent/meshagent/ui/web
web_stamp=$web/node_modules/.installed-$(sha1sum "$web/package-lock.json" | cut -c1-12)
if [ ! -e "$web_stamp" ]; then
  log "npm ci in $web"
  (cd "$web" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
  touch "$web_stamp"
fi

log "ready: $(.venv/bin/python -c 'import bcc, sys; print("bcc", bcc.__version__ if hasattr(bcc, "__version__") else "?", "python", sys.version.split()[0])')"
