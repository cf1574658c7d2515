#!/usr/bin/env bash
# Builds the meshagent OCI image from deploy/Dockerfile with Debian's own tools, from nothing:
#   scripts/image.sh tools   installs podman, buildah, runc and mmdebstrap when missing
#   scripts/image.sh base    makes the debian:bookworm-slim base locally (no image registry is needed) once
#   scripts/image.sh build   all of the above, then the image itself; prints its size and the build time
# Every step checks before it acts, so running it again only rebuilds what changed (buildah's layer cache).
# Must run as root (rootful podman storage, chroot builds).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

IMAGE=${IMAGE:-localhost/meshagent:0.1.0}
BASE=${BASE:-localhost/debian:bookworm-slim}
# The base's package sources: bookworm with its point and security updates, as the official image has.
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# Another header series to bundle, as a Debian meta package (for example linux-headers-6.12-amd64);
# empty: the Dockerfile's default, bookworm's own kernel series.
KERNEL_HEADERS_PACKAGE=${KERNEL_HEADERS_PACKAGE:-}

log() { printf '[image] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "[image] must run as root (rootful podman storage and chroot builds)" >&2
  exit 1
fi

install_tools() {
  local missing=() pkg
  # runc, not crun: crun refuses hosts whose cgroups are in the hybrid (v1 + v2) layout.
  for pkg in podman buildah runc mmdebstrap uidmap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

make_base() {
  if podman image exists "$BASE"; then
    log "base $BASE is cached (podman rmi $BASE to make it again)"
    return
  fi
  local work started
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  started=$(date +%s)
  log "making $BASE with mmdebstrap (minbase, documentation left out as in the slim images)"
  # The dpkg options are written into the base's /etc/dpkg/dpkg.cfg.d, so packages the Dockerfile adds
  # later leave their manuals and translations out as well.
  mmdebstrap --quiet --variant=minbase --format=tar \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$work/base.tar" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY_MIRROR bookworm-security main" </dev/null
  podman import --quiet --change 'CMD ["bash"]' "$work/base.tar" "$BASE" >/dev/null
  log "base $BASE made in $(($(date +%s) - started)) s"
}

build_image() {
  local started size
  started=$(date +%s)
  log "building $IMAGE from deploy/Dockerfile"
  # chroot isolation and the host's network: the build only needs Debian's mirror and PyPI, and this
  # works on hosts where nested user namespaces or container networking are unavailable.
  # pip inside the build trusts what this host trusts (its bundle may hold a TLS-inspecting proxy's CA);
  # the bundle is mounted for the build only, never copied into a layer.
  local trust=()
  if [ -f "$HOST_CA_BUNDLE" ]; then
    trust=(--volume "$HOST_CA_BUNDLE:/run/build-ca.crt:ro" --build-arg PIP_CERT=/run/build-ca.crt)
  fi
  buildah bud --quiet --isolation chroot --network host --pull=never --layers "${trust[@]}" \
    --build-arg "KERNEL_HEADERS_PACKAGE=$KERNEL_HEADERS_PACKAGE" \
    --file deploy/Dockerfile --tag "$IMAGE" . >/dev/null
  size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
  log "built $IMAGE in $(($(date +%s) - started)) s; size $((size / 1000000)) MB ($size bytes)"
}

case "${1:-build}" in
  tools) install_tools ;;
  base) install_tools; make_base ;;
  build) install_tools; make_base; build_image ;;
  *) echo "usage: $0 [tools|base|build]" >&2; exit 2 ;;
esac
