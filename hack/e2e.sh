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
# image of the last `make images`. Artifacts (kuttl's logs and report, the
# kubeconfig kuttl writes, its binary) go to $VMSCALE_CACHE/e2e: nothing is
# written into the clone.
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
mkdir -p "$artifacts/run" "$artifacts/bin"
log "kuttl e2e against $KUBECONFIG with $VM_IMAGE${1:+ (test $1)}"
# kuttl writes a `kubeconfig` into its working directory, so it runs in
# $artifacts/run, never in the clone: it is built there once (go's build
# cache makes a rebuild instant) and given absolute test folders, which
# replace the config's testDirs.
kuttl_bin="$artifacts/bin/kubectl-kuttl"
go build -modfile=hack/tools/go.mod -o "$kuttl_bin" github.com/kudobuilder/kuttl/cmd/kubectl-kuttl
kuttl() {
	local config="$1" dir="$2"; shift 2
	(cd "$artifacts/run" && "$kuttl_bin" test --config "$VMSCALE_ROOT/$config" \
		--artifacts-dir "$artifacts" --report JSON "$@" "$VMSCALE_ROOT/$dir")
}
if [ -n "${1:-}" ]; then
	if [ -d "tests/e2e/serial/$1" ]; then
		kuttl tests/e2e/kuttl-serial.yaml tests/e2e/serial --test "$1"
	else
		kuttl tests/e2e/kuttl-test.yaml tests/e2e/suite --test "$1"
	fi
else
	rc=0
	kuttl tests/e2e/kuttl-test.yaml tests/e2e/suite --report-name kuttl-report || rc=1
	kuttl tests/e2e/kuttl-serial.yaml tests/e2e/serial --report-name kuttl-serial-report || rc=1
	exit "$rc"
fi
