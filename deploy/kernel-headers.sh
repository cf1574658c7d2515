#!/bin/sh
# Bundles one Debian kernel header set into DEST as a single tree that BCC can compile against with
# BCC_KERNEL_SOURCE=DEST. Run inside the image build, after `apt-get update`:
#   kernel-headers.sh DEST [HEADERS_PACKAGE]
# HEADERS_PACKAGE is a meta package such as linux-headers-amd64 (the default: the distribution's current
# kernel series for this architecture). Its exact version is looked up, never written down, because the
# distribution's security updates move it.
#
# Debian splits a header set in two: linux-headers-<ver>-common (the kernel's include/ and arch/ trees)
# and linux-headers-<ver>-<flavour> (the configuration and generated headers). BCC finds the two halves
# only as /lib/modules/$(uname -r)/{source,build}, and that path names the running kernel, which the
# image cannot know. With BCC_KERNEL_SOURCE it takes one directory, so the halves are merged into one
# here. Only the running architecture's arch/ tree is kept, and the package tools (kbuild, gcc) are not
# installed: BCC's own clang needs headers only.
set -eu

dest=$1
arch=$(dpkg --print-architecture)
meta=${2:-linux-headers-$arch}
case "$arch" in
  amd64) kernel_arch=x86 ;;
  arm64) kernel_arch=arm64 ;;
  *) echo "kernel-headers.sh: no kernel arch/ tree known for $arch" >&2; exit 1 ;;
esac

depends_on() {  # the first dependency of package $1 whose name matches the pattern $2
  apt-cache depends "$1" | sed -n "s/^ *Depends: \($2\)\$/\1/p" | head -n 1
}
flavour_pkg=$(depends_on "$meta" 'linux-headers-[0-9].*')
common_pkg=$(depends_on "$flavour_pkg" 'linux-headers-.*-common.*')
if [ -z "$flavour_pkg" ] || [ -z "$common_pkg" ]; then
  echo "kernel-headers.sh: cannot resolve the header packages of $meta (got '$flavour_pkg', '$common_pkg')" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$flavour_pkg" "$common_pkg" >/dev/null)
for deb in "$work"/*.deb; do
  dpkg-deb -x "$deb" "$work/root"
done
common=$work/root/usr/src/$common_pkg
flavour=$work/root/usr/src/$flavour_pkg

mkdir -p "$dest/arch"
cp -a "$common/Makefile" "$common/include" "$dest/"
cp -a "$common/arch/$kernel_arch" "$dest/arch/"
# cp merges directories: the flavour's include/generated, include/config and arch/<arch>/include/generated
# land beside the common trees, as in a kernel build directory.
cp -a "$flavour/.config" "$flavour/include" "$flavour/arch" "$dest/"
test -f "$dest/include/linux/kconfig.h" && test -f "$dest/include/generated/autoconf.h"
version=$(dpkg-deb --field "$work"/"$flavour_pkg"_*.deb Version)
printf '%s %s\n' "$flavour_pkg" "$version" >"$dest/VERSION"
echo "kernel-headers.sh: $flavour_pkg $version in $dest ($(du -sh "$dest" | cut -f1))"
