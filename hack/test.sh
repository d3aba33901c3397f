#!/usr/bin/env bash
# The whole test suite, as `make test` and CI (.ci/run) run it. On a fresh
# machine it first installs what the tests need (Debian packages, Kubernetes
# binaries built from the module proxy, development tools), all cached in
# $VMSCALE_CACHE, so a second run only compiles what changed.
source "$(dirname "$0")/lib/common.sh"
cd "$VMSCALE_ROOT"

start=$SECONDS
step() { log "== $* ($((SECONDS - start))s)"; }

# What `git status` shows before the run (empty in CI's fresh clone): the run
# must leave the tree exactly so (checked at the end).
in_git=false
if git -C "$VMSCALE_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	in_git=true
	tree_before="$(git -C "$VMSCALE_ROOT" status --porcelain)"
fi

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
local_kubeconfig="$VMSCALE_CACHE/local-cluster/kubeconfig"

# The cluster tests run their own controller on the host: a vmscale left
# deployed by the last run (or by make demo) would fight it.
if KUBECONFIG="$local_kubeconfig" kubectl get -n neonvm-system deployment neonvm-controller >/dev/null 2>&1 ||
	KUBECONFIG="$local_kubeconfig" kubectl get validatingwebhookconfiguration neonvm-validating-webhook-configuration >/dev/null 2>&1; then
	step "removing vmscale's deployment from the local cluster for the cluster tests"
	KUBECONFIG="$local_kubeconfig" DEPLOY_CONFIG=config/local-cluster hack/deploy.sh down
fi

step "go test (unit, generated-file freshness, integration on real kube-apiserver, local cluster)"
go test -count=1 -timeout 45m ./... 2>&1 | tee "${VMSCALE_TEST_LOG:-/dev/null}"

step "deploy vmscale to the local cluster (make deploy-local)"
KUBECONFIG="$local_kubeconfig" DEPLOY_CONFIG=config/local-cluster hack/deploy.sh up

step "end-to-end suite (kuttl, tests/e2e)"
mkdir -p "$VMSCALE_CACHE/e2e"
e2e_log="$VMSCALE_CACHE/e2e/kuttl.log"
if ! with_progress "kuttl e2e" bash -c 'KUBECONFIG="$1" hack/e2e.sh >"$2" 2>&1' _ "$local_kubeconfig" "$e2e_log"; then
	tail -n 300 "$e2e_log"
	grep -E 'failed in step|case.go' "$e2e_log" || true
	die "the end-to-end suite failed (whole log: $e2e_log)"
fi
grep -E -- '--- (PASS|FAIL)' "$e2e_log"
cat "$e2e_log" >>"${VMSCALE_TEST_LOG:-/dev/null}"

# A test run writes only into $VMSCALE_CACHE and temporary folders: a clone
# it leaves changed (a kubeconfig, a binary, a regenerated file) would give the
# next build's images a -dirty tag.
# In a clean clone (CI) `git status --porcelain` must be empty.
if $in_git; then
	step "the work tree is as the run found it"
	changed="$(comm -13 <(sort <<<"$tree_before") <(git -C "$VMSCALE_ROOT" status --porcelain | sort))"
	[ -z "$changed" ] || die "the test run changed the work tree (tests write into \$VMSCALE_CACHE or a temporary folder):
$changed"
fi

step "all tests passed"
