#!/usr/bin/env bash
# Installs QEMU (system emulator for x86_64, qemu-img) and the disk tools the
# runner uses (genisoimage, mkfs.ext4) from Debian, once.
source "$(dirname "$0")/lib/common.sh"
apt_install qemu-system-x86 qemu-utils genisoimage e2fsprogs dnsmasq-base iproute2 iptables
command -v qemu-system-x86_64
