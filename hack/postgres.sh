#!/usr/bin/env bash
# Installs PostgreSQL (server and client) from Debian, once, for the
# vm-monitor's file-cache tests; they start their own throwaway server as the
# postgres user on a loopback port, so nothing is started here. Prints the
# folder holding the server binaries.
source "$(dirname "$0")/lib/common.sh"
apt_install postgresql
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
[ -x "$bin/initdb" ] || die "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
id postgres >/dev/null 2>&1 || die "postgresql installed but there is no postgres user"
echo "$bin"
