#!/usr/bin/env bash
# Runs the kuttl end-to-end suite (tests/e2e) against a cluster where vmscale
# is deployed: $KUBECONFIG, or the local cluster when it is unset.
#
#   hack/e2e.sh [TEST]      all tests, or the one named (a folder of
#                           tests/e2e/suite or tests/e2e/serial)
#
# tests/e2e/suite runs two tests at a time; then tests/e2e/serial, whose
# tests need the cluster's capacity to themselves, one at a time.
#
# VM_IMAGE (the Postgres root disk the VMs boot) defaults to the vm-postgres
# image of the last `make images`. Artifacts (kuttl's logs and report) go to
# $VMSCALE_CACHE/e2e.
source "$(dirname "$0")/lib/common.sh"
cd "$VMSCALE_ROOT"

export KUBECONFIG="${KUBECONFIG:-$VMSCALE_CACHE/local-cluster/kubeconfig}"
if [ -z "${VM_IMAGE:-}" ]; then
	VM_IMAGE="$(awk '$1 == "vm-postgres" { print $2 }' "$VMSCALE_CACHE/images/images.txt" 2>/dev/null || true)"
	[ -n "$VM_IMAGE" ] || die "no vm-postgres image: run \`make images\` or set VM_IMAGE"
fi
export VM_IMAGE
kubectl get deployment -n neonvm-system neonvm-controller >/dev/null 2>&1 ||
	die "vmscale is not deployed in $KUBECONFIG: run \`make deploy-local\` (or \`make deploy\`) first"

artifacts="$VMSCALE_CACHE/e2e"
mkdir -p "$artifacts"
log "kuttl e2e against $KUBECONFIG with $VM_IMAGE${1:+ (test $1)}"
kuttl() { go tool -modfile=hack/tools/go.mod kubectl-kuttl test --artifacts-dir "$artifacts" --report JSON "$@"; }
if [ -n "${1:-}" ]; then
	config=tests/e2e/kuttl-test.yaml
	[ -d "tests/e2e/serial/$1" ] && config=tests/e2e/kuttl-serial.yaml
	kuttl --config "$config" --test "$1"
else
	rc=0
	kuttl --config tests/e2e/kuttl-test.yaml --report-name kuttl-report || rc=1
	kuttl --config tests/e2e/kuttl-serial.yaml --report-name kuttl-serial-report || rc=1
	exit "$rc"
fi
