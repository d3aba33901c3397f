#!/usr/bin/env bash
# The whole test suite, as `make test` and CI (.ci/run) run it. On a fresh
# machine it first installs what the tests need (Debian packages, Kubernetes
# binaries built from the module proxy, development tools), all cached in
# $VMSCALE_CACHE, so a second run only compiles what changed.
source "$(dirname "$0")/lib/common.sh"
cd "$VMSCALE_ROOT"

start=$SECONDS
step() { log "== $* ($((SECONDS - start))s)"; }

step "Kubernetes binaries (etcd, kube-apiserver, kubectl, kubelet, ...)"
assets="$(hack/k8s-binaries.sh)"
export KUBEBUILDER_ASSETS="$assets"

step "QEMU (Debian)"
hack/qemu.sh >/dev/null
hack/postgres.sh >/dev/null

step "development tools (controller-gen, kustomize)"
with_progress "build tools" bash -c 'go tool -modfile=hack/tools/go.mod controller-gen --version >/dev/null &&
	go tool -modfile=hack/tools/go.mod kustomize version >/dev/null'

step "go build and go vet"
go build ./...
go vet ./...

step "image builder tests"
(cd hack/images && go vet ./... && go test -count=1 ./...)

step "guest image (hack/guest/build.sh)"
hack/guest/build.sh >/dev/null

step "local two-node cluster (hack/local-cluster/cluster.sh up)"
hack/local-cluster/cluster.sh up >/dev/null

step "go test (unit, generated-file freshness, integration on real kube-apiserver, local cluster)"
go test -count=1 -timeout 45m ./... 2>&1 | tee "${VMSCALE_TEST_LOG:-/dev/null}"

step "all tests passed"
