#!/usr/bin/env bash
# Builds the runner image's Debian root (make images uses it): a bookworm
# minbase with QEMU and what the runner calls (qemu-img, genisoimage,
# mkfs.ext4, mkswap, ip, iptables, dnsmasq), and the `qemu` user QEMU runs
# as. Written as a tar file with fixed timestamps, cached by its inputs (this
# script and the candidate version of every package it asks for); prints its
# path. Cold: ~1 minute (mmdebstrap), warm: instant.
source "$(dirname "$0")/lib/common.sh"

apt_install mmdebstrap

PACKAGES=(qemu-system-x86 qemu-utils genisoimage e2fsprogs iproute2 iptables dnsmasq-base ca-certificates)

key="$( {
	cat "$0"
	apt-cache policy "${PACKAGES[@]}" | awk '/^[^ ]/ { p = $1 } /Candidate:/ { print p, $2 }'
} | sha256sum | cut -c1-16)"
dir="$VMSCALE_CACHE/runner-rootfs"
out="$dir/$key.tar"
if [ -s "$out" ]; then
	echo "$out"
	exit 0
fi
mkdir -p "$dir"

sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[ -s "$f" ] && grep -qv '^\s*#' "$f" && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || die "no apt sources configured on this machine"

start=$SECONDS
# QEMU's user: a fixed uid/gid (36:36) so the init container, which knows
# no names, can hand it the root disk. Upstream NeonVM uses 36:34, but gid 34
# is Debian's "backup" group.
export SOURCE_DATE_EPOCH=0
with_progress "runner rootfs (mmdebstrap)" mmdebstrap --quiet --variant=minbase \
	--include="$(IFS=,; echo "${PACKAGES[*]}")" \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
	--customize-hook='chroot "$1" groupadd --system --gid 36 qemu' \
	--customize-hook='chroot "$1" useradd --system --no-create-home --uid 36 --gid 36 --shell /usr/sbin/nologin qemu' \
	--customize-hook='rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists" "$1/var/log"/*; mkdir -p "$1/var/cache/apt" "$1/var/lib/apt/lists"' \
	bookworm "$dir/partial-$key.tar" "${sources[@]}"
mv "$dir/partial-$key.tar" "$out"
# Keep the two newest roots.
ls -1t "$dir"/*.tar 2>/dev/null | tail -n +3 | xargs -r rm -f
log "runner rootfs built in $((SECONDS - start))s: $(du -h "$out" | cut -f1) in $out"
echo "$out"
