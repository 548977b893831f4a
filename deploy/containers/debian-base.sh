#!/usr/bin/env bash
# A Debian bookworm base image made on this machine with debootstrap, for machines that reach no
# container registry: python3 (with venv), CA certificates, and this machine's apt sources and
# extra certificate authorities (HTTPS to the package registries may go through a proxy whose CA
# only this machine has). Needs root.
#
#   deploy/containers/debian-base.sh [IMAGE]     (default localhost/milo-debian:bookworm)
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/containers/engine.sh
image=${1:-localhost/milo-debian:bookworm}
command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 3; }
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >/dev/null
cp /etc/apt/sources.list.d/*.sources "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$rootfs/etc/apt/sources.list"
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
fi
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
tar --numeric-owner -C "$rootfs" -cf - . | $ENGINE import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "$image"
