#!/bin/sh
# node-setup.sh: the extra network's bridge and VXLAN on one node (run as
# root on every node, e.g. from a privileged hostNetwork DaemonSet or the
# node's provisioning, before runner pods with spec.extraNetwork start).
#
#   node-setup.sh <this node's underlay IP> <underlay device> <peer IP>...
#
# Head-end replication: the VXLAN sends broadcast and unknown frames to each
# peer (an all-zero FDB entry per peer) and learns where each guest MAC is.
# Rerun it with the new peer list when nodes come and go (present entries
# are kept, so it is idempotent; remove a departed peer's entry with
# `bridge fdb del 00:00:00:00:00:00 dev neon-vxlan0 dst <ip>`).
set -eu
local_ip="$1" dev="$2"; shift 2
VNI=100 PORT=4789 MTU=1450

ip link show neon-br0 >/dev/null 2>&1 || ip link add neon-br0 mtu "$MTU" type bridge
ip link show neon-vxlan0 >/dev/null 2>&1 ||
	ip link add neon-vxlan0 mtu "$MTU" type vxlan id "$VNI" local "$local_ip" dev "$dev" dstport "$PORT" learning
for peer in "$@"; do
	[ "$peer" = "$local_ip" ] && continue
	bridge fdb show dev neon-vxlan0 | grep -q "^00:00:00:00:00:00 dst $peer " ||
		bridge fdb append 00:00:00:00:00:00 dev neon-vxlan0 dst "$peer"
done
ip link set neon-vxlan0 master neon-br0 up
ip link set neon-br0 up
