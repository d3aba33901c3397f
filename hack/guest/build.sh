#!/usr/bin/env bash
# Builds vmscale's test guest (make guest-image) from Debian packages and this
# module's binaries, cached by its inputs; prints the folder holding
#   vmlinux     Debian's kernel, uncompressed (booted through PVH)
#   initrd.img  busybox + the virtio/ext4 modules; switches to /dev/vda
#   disk.qcow2  Debian bookworm minbase + PostgreSQL 15 (initialised at build
#               time, trust auth), busybox init, neonvm-daemon, the
#               metrics exporter on :9100 and vm-monitor on :10301 (2 GiB)
# Cold: ~3 minutes (mmdebstrap), warm: instant.
source "$(dirname "$0")/../lib/common.sh"
cd "$VMSCALE_ROOT"

apt_install mmdebstrap busybox-static qemu-utils e2fsprogs xz-utils

kpkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
[ -n "$kpkg" ] || die "cannot tell which linux-image package linux-image-amd64 depends on"
bbver="$(dpkg-query -W -f='${Version}' busybox-static)"

# The cache key covers everything the image is made of.
key="$( {
	echo "$kpkg $bbver $(go env GOVERSION)"
	cat hack/guest/build.sh
	find neonvm/guest neonvm/daemon neonvm/guestexec cmd/neonvm-daemon cmd/vm-builder pkg/guestmetrics cmd/guest-metrics pkg/api pkg/monitor cmd/vm-monitor -type f -name '*' | sort | xargs cat
	cat go.sum
} | sha256sum | cut -c1-16)"
out="$VMSCALE_CACHE/guest/$key"
if [ -f "$out/disk.qcow2" ]; then
	echo "$out"
	exit 0
fi

start=$SECONDS
work="$(mktemp -d "$VMSCALE_CACHE/.guest-build.XXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/kernel"

log "guest image $key: kernel $kpkg"
(cd "$work" && apt-get download -q "$kpkg" >/dev/null 2>&1) || die "apt-get download $kpkg failed"
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
go build -o "$work/vm-builder" ./cmd/vm-builder
"$work/vm-builder" vmlinux -in "$(ls "$work"/kernel/boot/vmlinuz-*)" -out "$work/vmlinux"
"$work/vm-builder" initramfs -kernel-root "$work/kernel" -busybox /bin/busybox -out "$work/initrd.img"

log "guest image $key: neonvm-daemon, guest-metrics, vm-monitor"
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$work/" ./cmd/neonvm-daemon ./cmd/guest-metrics ./cmd/vm-monitor

log "guest image $key: root filesystem (mmdebstrap bookworm minbase + postgresql-15; ~1-2 min)"
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[ -s "$f" ] && grep -qv '^\s*#' "$f" && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || die "no apt sources configured on this machine"
with_progress "mmdebstrap" mmdebstrap --quiet --variant=minbase \
	--include=postgresql-15,ca-certificates \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/lib/llvm-*' --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/libLLVM*' \
	--dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/libz3*' --dpkgopt='path-exclude=/usr/lib/postgresql/15/lib/llvmjit*' \
	--setup-hook='mkdir -p "$1/etc/postgresql-common" && echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.conf"' \
	--customize-hook='chroot "$1" runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb --no-sync -D /var/lib/postgresql/data --auth=trust -U postgres >/dev/null' \
	--customize-hook='printf "%s\n" "listen_addresses = '"'"'*'"'"'" "jit = off" "unix_socket_directories = '"'"'/run/postgresql'"'"'" >> "$1/var/lib/postgresql/data/postgresql.conf"' \
	--customize-hook='echo "host all all 0.0.0.0/0 trust" >> "$1/var/lib/postgresql/data/pg_hba.conf"' \
	--customize-hook='rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists"; mkdir -p "$1/var/cache/apt" "$1/var/lib/apt/lists"' \
	bookworm "$work/rootfs" "${sources[@]}"

log "guest image $key: disk"
"$work/vm-builder" disk -rootfs "$work/rootfs" -out "$work/disk.qcow2" -size 2G \
	-busybox /bin/busybox -daemon "$work/neonvm-daemon" -metrics "$work/guest-metrics" -monitor "$work/vm-monitor"

mkdir -p "$out.tmp"
mv "$work/vmlinux" "$work/initrd.img" "$work/disk.qcow2" "$out.tmp/"
echo "kernel=$kpkg busybox=$bbver built=$(date -u +%FT%TZ)" >"$out.tmp/manifest.txt"
rm -rf "$out" && mv "$out.tmp" "$out"
# Keep the three newest images; older inputs are unlikely to come back.
ls -1dt "$VMSCALE_CACHE"/guest/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
log "guest image built in $((SECONDS - start))s: $(du -sh "$out" | cut -f1) in $out"
echo "$out"
