#!/usr/bin/env bash
# Idempotent set-up for the kernel matrix (`make vm-test`): host packages for QEMU/virtme-ng, virtme-ng in
# its own venv, and each guest kernel unpacked (image, modules, headers, kbuild) into a cache folder.
#
# Nothing is installed into /boot or /lib/modules of the host: the guest's root is the host's `/`
# read-only, and virtme-ng takes the modules from the unpacked tree next to the kernel image. Package
# versions move with security updates, so they are resolved with apt-cache on every run, never written here.
#
# Output: one line per kernel in "$VM_CACHE/kernels.tsv": <label> <kernel release> <vmlinuz path> <root>.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Not under /var/cache, /var/tmp or /tmp: virtme-ng hides those behind a tmpfs or an overlay in the guest,
# and the guest must see the unpacked modules and headers at the same path as the host.
VM_CACHE=${MESHAGENT_VM_CACHE:-/var/lib/meshagent/vm}
# Debian bookworm's own kernel lists: the distribution kernel (6.1) and the newer backport line (6.12).
# Label = the Debian meta package, resolved to a versioned package below.
KERNEL_META=${MESHAGENT_VM_KERNELS:-"linux-image-amd64 linux-image-6.12-amd64"}
VNG_VERSION=1.42

log() { printf '[vm-setup] %s\n' "$*"; }
die() { printf '[vm-setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (QEMU, and the guests run the privileged suite)"

# kmod: vng runs depmod (crashes without it); udev: without it vng prints nothing and exits 255;
# busybox-static: Debian kernels have 9p as modules, so vng builds an initramfs with busybox.
host_packages=(qemu-system-x86 kmod udev busybox-static)
missing=()
for pkg in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
apt_updated=0
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt_updated=1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$VM_CACHE/debs" "$VM_CACHE/kernels"

# virtme-ng from PyPI in its own venv, so its dependencies never mix with the project's.
vng_venv=$VM_CACHE/vng-venv
if ! "$vng_venv/bin/vng" --version 2>/dev/null | grep -q "$VNG_VERSION"; then
  log "installing virtme-ng $VNG_VERSION into $vng_venv"
  rm -rf "$vng_venv"
  /usr/bin/python3 -m venv "$vng_venv"
  "$vng_venv/bin/pip" install -q "virtme-ng==$VNG_VERSION"
fi

# First dependency of a meta package that starts with a prefix (e.g. linux-image-amd64 -> the versioned image).
depends_on() {
  apt-cache depends "$1" 2>/dev/null | awk -v p="$2" '$1 ~ /Depends:/ && index($2, p) == 1 {print $2; exit}'
}

resolve_packages() {
  # Prints the versioned image package and the header packages it needs (arch headers, common, kbuild).
  local meta=$1 image headers_meta headers common kbuild
  image=$(depends_on "$meta" linux-image-)
  [ -n "$image" ] || return 1
  headers_meta=${meta/linux-image-/linux-headers-}
  headers=$(depends_on "$headers_meta" linux-headers-)
  [ -n "$headers" ] || return 1
  common=$(depends_on "$headers" linux-headers-)
  kbuild=$(depends_on "$headers" linux-kbuild-)
  [ -n "$common" ] && [ -n "$kbuild" ] || return 1
  echo "$image $headers $common $kbuild"
}

download_debs() {
  (cd "$VM_CACHE/debs" && apt-get download -qq -o APT::Sandbox::User=root "$@" >/dev/null)
}

: >"$VM_CACHE/kernels.tsv.new"
: >"$VM_CACHE/packages.list.new"
for meta in $KERNEL_META; do
  if ! pkgs=$(resolve_packages "$meta"); then
    if [ "$apt_updated" = 0 ]; then
      log "apt-get update (cannot resolve $meta)"
      apt-get update -qq
      apt_updated=1
    fi
    pkgs=$(resolve_packages "$meta") || die "cannot resolve the packages of $meta with apt-cache"
  fi
  read -r image headers common kbuild <<<"$pkgs"
  printf '%s\n' $pkgs >>"$VM_CACHE/packages.list.new"
  # The kernel release is the image package name without its prefix: linux-image-6.1.0-56-amd64 -> 6.1.0-56-amd64.
  release=${image#linux-image-}
  release=${release%-unsigned}
  root=$VM_CACHE/kernels/$release
  stamp=$root/.unpacked
  if [ ! -e "$stamp" ]; then
    log "downloading $image $headers $common $kbuild"
    # Package names like linux-kbuild-6.1 stay the same across versions: drop older files so the
    # unpack below can only take what was just downloaded.
    for pkg in "$image" "$headers" "$common" "$kbuild"; do
      rm -f "$VM_CACHE/debs/${pkg}_"*.deb
    done
    # A stale package list names versions the mirror no longer has (404): refresh it once and retry.
    if ! download_debs "$image" "$headers" "$common" "$kbuild"; then
      [ "$apt_updated" = 1 ] || { log "apt-get update (download failed)"; apt-get update -qq; apt_updated=1; }
      download_debs "$image" "$headers" "$common" "$kbuild" || die "apt-get download failed for $meta"
    fi
    rm -rf "$root.tmp"
    mkdir -p "$root.tmp"
    for pkg in "$image" "$headers" "$common" "$kbuild"; do
      deb=$(ls "$VM_CACHE/debs/${pkg}_"*.deb)
      log "unpacking $(basename "$deb")"
      dpkg-deb -x "$deb" "$root.tmp"
    done
    rm -rf "$root"
    mv "$root.tmp" "$root"
    # The headers package links build -> /usr/src/..., an absolute path of the host that does not exist
    # for this release: point build/source into the unpacked tree instead (BCC needs both build and source).
    mods=$root/lib/modules/$release
    [ -d "$mods" ] || die "no modules directory $mods in $image"
    ln -sfn "$root/usr/src/linux-headers-$release" "$mods/build"
    ln -sfn "$root/usr/src/${common}" "$mods/source"
    # vng runs depmod itself on a private copy, but a ready modules.dep saves work in every guest.
    depmod -b "$root" "$release"
    touch "$stamp"
  fi
  vmlinuz=$root/boot/vmlinuz-$release
  [ -f "$vmlinuz" ] || die "no kernel image $vmlinuz"
  printf '%s\t%s\t%s\t%s\n' "$meta" "$release" "$vmlinuz" "$root" >>"$VM_CACHE/kernels.tsv.new"
done
mv "$VM_CACHE/kernels.tsv.new" "$VM_CACHE/kernels.tsv"
mv "$VM_CACHE/packages.list.new" "$VM_CACHE/packages.list"
# Releases superseded by a security update are no longer listed: drop their trees and packages.
for dir in "$VM_CACHE/kernels/"*; do
  [ -d "$dir" ] || continue
  if ! cut -f4 "$VM_CACHE/kernels.tsv" | grep -qxF "$dir"; then
    log "removing unused $(basename "$dir")"
    rm -rf "$dir"
  fi
done
for deb in "$VM_CACHE/debs/"*.deb; do
  [ -e "$deb" ] || continue
  pkg=$(basename "$deb"); pkg=${pkg%%_*}
  grep -qxF -- "$pkg" "$VM_CACHE/packages.list" || rm -f "$deb"
done

log "ready: $(cut -f2 "$VM_CACHE/kernels.tsv" | tr '\n' ' ')(cache $VM_CACHE, repo $repo_root)"
