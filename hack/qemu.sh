#!/usr/bin/env bash
# Installs QEMU (system emulator for x86_64, and qemu-img) from Debian, once.
source "$(dirname "$0")/lib/common.sh"
apt_install qemu-system-x86 qemu-utils
command -v qemu-system-x86_64
