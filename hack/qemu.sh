#!/usr/bin/env bash
# Installs QEMU (system emulator for x86_64, qemu-img) and the disk tools the
# runner uses (genisoimage, mkfs.ext4, dnsmasq, iptables) and the Postgres
# client the guest tests connect with, from Debian, once.
source "$(dirname "$0")/lib/common.sh"
apt_install qemu-system-x86 qemu-utils genisoimage e2fsprogs dnsmasq-base iproute2 iptables postgresql-client
command -v qemu-system-x86_64
