#!/usr/bin/env bash
# Build the Debian bookworm arm64 root with mmdebstrap into DEST (a directory).
# Usage: image/mkroot.sh DEST DEBCACHE
#   DEST      the root directory to create (must not exist)
#   DEBCACHE  a directory of .deb files kept between builds (apt's downloads)
# Maintainer scripts run through qemu-user-static (binfmt_misc, F flag).
# The initramfs configuration (MODULES=list, the overlay script) is laid in
# by an essential hook, before linux-image-arm64's postinst builds the initrd.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DEST=$1
DEBCACHE=$2
mkdir -p "$DEBCACHE"
mapfile -t PKGS < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/packages.txt")
include=$(IFS=,; echo "${PKGS[*]}")

nodoc=(
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
)

# Keep the host's apt configuration (proxies) out; run hooks with a clean env.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
mmdebstrap --mode=root --arch=arm64 --variant=minbase \
    --components="main non-free-firmware" \
    --include="$include" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt=force-unsafe-io \
    "${nodoc[@]}" \
    --skip=download/empty --skip=essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in '$DEBCACHE' /var/cache/apt/archives/" \
    --essential-hook="sync-in '$HERE/rootfs-pre' /" \
    --customize-hook="sync-out /var/cache/apt/archives '$DEBCACHE'" \
    bookworm "$DEST" \
    "deb http://deb.debian.org/debian bookworm main non-free-firmware" \
    "deb http://deb.debian.org/debian bookworm-updates main non-free-firmware" \
    "deb http://deb.debian.org/debian-security bookworm-security main non-free-firmware"
