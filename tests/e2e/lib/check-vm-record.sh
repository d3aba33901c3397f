#!/bin/sh
# check-vm-record.sh FILE MINCPU MAXCPU MINMEM MAXMEM: fails unless every
# sample of record-vm.sh kept the VM within the bounds (CPUs as 250m or 1;
# memory as 512Mi or 1Gi) and at or below the scheduler's permit, and
# prints the largest and smallest seen.
exec awk -v mincpu="$2" -v maxcpu="$3" -v minmem="$4" -v maxmem="$5" '
function cpu(s) { if (s ~ /m$/) return substr(s, 1, length(s) - 1) / 1000; return s + 0 }
function mib(s) {
	if (s ~ /Gi$/) return substr(s, 1, length(s) - 2) * 1024
	if (s ~ /Mi$/) return substr(s, 1, length(s) - 2) + 0
	return s / 1048576
}
BEGIN { lo_c = 1e9; lo_m = 1e9; bad = 0 }
{
	c = cpu($2); m = $3 * mib($4); n++
	if (c > hi_c) hi_c = c; if (c < lo_c) lo_c = c
	if (m > hi_m) hi_m = m; if (m < lo_m) lo_m = m
	if (c < cpu(mincpu) || c > cpu(maxcpu) || m < mib(minmem) || m > mib(maxmem)) {
		print "out of bounds at " $1 ": cpus " c " memory " m "Mi"; bad = 1
	}
	# The permit, e.g. {"vCPUs":"750m","mem":"768Mi"}: the VM is never
	# asked for more than the scheduler granted.
	if (match($0, /"vCPUs":"?[0-9.]+m?/)) {
		pc = substr($0, RSTART, RLENGTH); sub(/^"vCPUs":"?/, "", pc)
		match($0, /"mem":"?[0-9.]+[MG]?i?/); pm = substr($0, RSTART, RLENGTH); sub(/^"mem":"?/, "", pm)
		if (c > cpu(pc) || m > mib(pm)) { print "above the permit at " $1 ": cpus " c " > " pc " or memory " m "Mi > " pm; bad = 1 }
	}
}
END {
	if (n == 0) { print "no samples"; exit 1 }
	print n " samples: cpus " lo_c ".." hi_c ", memory " lo_m ".." hi_m "Mi"
	exit bad
}' "$1"
