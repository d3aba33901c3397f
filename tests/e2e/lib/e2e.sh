# Helpers for the kuttl steps' scripts. kuttl runs each script in the test's
# folder with $NAMESPACE set, under sh (so: POSIX shell); `make e2e` exports
# KUBECONFIG and VM_IMAGE.
#   . ../lib/e2e.sh
set -eu
: "${NAMESPACE:?kuttl sets NAMESPACE}" "${VM_IMAGE:?run through make e2e (sets VM_IMAGE)}"
k() { kubectl -n "$NAMESPACE" "$@"; }

# apply FILE: applies a manifest with @IMAGE@ replaced by the root disk image.
apply() { sed "s|@IMAGE@|$VM_IMAGE|g" "$1" | k apply -f -; }

# vm_field VM JSONPATH: one field of the VM.
vm_field() { k get neonvm "$1" -o "jsonpath={$2}"; }

# psql_vm VM SQL: runs SQL in the guest's Postgres (on the pod IP).
psql_vm() {
	ip="$(vm_field "$1" .status.podIP)"
	[ -n "$ip" ] || { echo "VM $1 has no pod IP yet" >&2; return 1; }
	PGCONNECT_TIMEOUT=10 psql -h "$ip" -U postgres -At -c "$2"
}

# eventually SECONDS WHAT CMD...: polls CMD once a second until it succeeds;
# fails with its last output after SECONDS.
eventually() {
	limit="$1" what="$2" start="$(date +%s)"; shift 2
	until out="$("$@" 2>&1)"; do
		if [ $(($(date +%s) - start)) -ge "$limit" ]; then
			echo "$what: not true after ${limit}s: $out" >&2
			return 1
		fi
		sleep 1
	done
	echo "$what ($(($(date +%s) - start))s)"
}

# state FILE: a per-test scratch file (kept outside the test folder).
state() { mkdir -p "${TMPDIR:-/tmp}/vmscale-e2e/$NAMESPACE"; echo "${TMPDIR:-/tmp}/vmscale-e2e/$NAMESPACE/$1"; }
