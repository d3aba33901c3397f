# Every vmscale workflow is a target here. Tools come from hack/tools/go.mod
# (go tool), Kubernetes binaries from hack/k8s-binaries.sh; both are cached in
# $(VMSCALE_CACHE) so a second run is fast.

SHELL := /usr/bin/env bash
VMSCALE_CACHE ?= $(HOME)/.cache/vmscale
export VMSCALE_CACHE

TOOLS := go tool -modfile=hack/tools/go.mod
KUSTOMIZE := $(TOOLS) kustomize
KUTTL := $(TOOLS) kubectl-kuttl

.PHONY: all
all: build

.PHONY: demo
demo: ## Start here: installs what is missing, brings up the local cluster, deploys vmscale and shows a Postgres VM scaling up under load and back down.
	hack/demo.sh

##@ Development

.PHONY: generate
generate: ## Regenerate deepcopy, CRDs, webhook config, RBAC and deploy/neonvm.yaml.
	hack/generate.sh

.PHONY: manifests
manifests: generate ## Same as generate (kubebuilder's name for the manifest half).

.PHONY: fmt
fmt:
	go fmt ./...

.PHONY: vet
vet:
	go vet ./...

.PHONY: build
build: ## Build every binary into bin/.
	go build -o bin/ ./cmd/...

IMAGES_DIR ?= $(VMSCALE_CACHE)/images

.PHONY: images
images: ## Build the image tarballs into $(IMAGES_DIR): every pod binary under cmd/, pause, the runner (Debian root + QEMU + guest kernel) and the vm-postgres root disk.
	rootfs="$$(hack/runner-rootfs.sh)" && guest="$$(hack/guest/build.sh)" && \
	cd hack/images && go run . -root ../.. -out $(IMAGES_DIR) -runner-rootfs "$$rootfs" -guest "$$guest"

##@ Local cluster (two nodes, no Docker; see hack/local-cluster/cluster.sh)

.PHONY: local-cluster
local-cluster: ## Bring the local cluster up (idempotent); prints its kubeconfig.
	hack/local-cluster/cluster.sh up

.PHONY: local-cluster-down
local-cluster-down: ## Stop the local cluster and remove what it set up on the host.
	hack/local-cluster/cluster.sh down

.PHONY: local-cluster-status
local-cluster-status: ## What runs, and the nodes.
	hack/local-cluster/cluster.sh status

.PHONY: local-cluster-images
local-cluster-images: ## Rebuild the images and import them into both nodes.
	hack/local-cluster/cluster.sh images

.PHONY: guest-image
guest-image: ## Build the test guest (kernel, initramfs, Postgres root disk) into the cache.
	hack/guest/build.sh

##@ Testing

.PHONY: test
test: ## The whole test suite: installs what it needs, then unit and integration tests.
	hack/test.sh

.PHONY: test-unit
test-unit: ## Tests that need nothing installed.
	go test ./api/... ./pkg/...

.PHONY: e2e
e2e: ## The kuttl end-to-end suite (tests/e2e) against a cluster with vmscale deployed ($$KUBECONFIG, else the local cluster); E2E_TEST=name runs one.
	hack/e2e.sh $(E2E_TEST)

.PHONY: bench
bench: ## Benchmarks that boot real guests (local processes, then runner pods in the local cluster); figures go to $(VMSCALE_CACHE)/bench/.
	go test -run '^$$' -bench . -benchtime 3x -timeout 30m ./tests/guest/ | tee /dev/stderr | grep -E '^Benchmark' > /dev/null
	go test -run '^$$' -bench . -benchtime 2x -timeout 30m ./tests/cluster/ | grep -E '^Benchmark'
	go test -run '^$$' -bench BenchmarkReconcileThroughput -benchtime 1x -timeout 20m ./tests/integration/ | grep -E '^Benchmark'
	@echo "figures: $(VMSCALE_CACHE)/bench/guest.txt"; tail -n 2 $(VMSCALE_CACHE)/bench/guest.txt
	@echo "figures: $(VMSCALE_CACHE)/bench/cluster.txt"; tail -n 3 $(VMSCALE_CACHE)/bench/cluster.txt
	@echo "figures: $(VMSCALE_CACHE)/bench/extranet.txt"; tail -n 1 $(VMSCALE_CACHE)/bench/extranet.txt
	@echo "figures: $(VMSCALE_CACHE)/bench/controller.txt"; tail -n 1 $(VMSCALE_CACHE)/bench/controller.txt

.PHONY: k8s-binaries
k8s-binaries: ## Install etcd and build kube-apiserver and kubectl into the cache.
	hack/k8s-binaries.sh

##@ Deployment

LOCAL_KUBECONFIG := $(VMSCALE_CACHE)/local-cluster/kubeconfig

.PHONY: install
install: ## Install the CRDs into the cluster of the current kubeconfig.
	$(KUSTOMIZE) build config/crd | kubectl apply --server-side -f -

.PHONY: deploy
deploy: ## Deploy vmscale to $$KUBECONFIG (deploy/vmscale.yaml with the images of `make images`, or IMAGE_TAG=...); waits until it answers.
	hack/deploy.sh up

.PHONY: undeploy
undeploy: ## Remove what `make deploy` applied, except the CRDs (and so every VM).
	hack/deploy.sh down

.PHONY: deploy-local
deploy-local: local-cluster ## Bring the local cluster up and deploy vmscale to it (config/local-cluster).
	KUBECONFIG=$(LOCAL_KUBECONFIG) DEPLOY_CONFIG=config/local-cluster hack/deploy.sh up

.PHONY: undeploy-local
undeploy-local:
	KUBECONFIG=$(LOCAL_KUBECONFIG) DEPLOY_CONFIG=config/local-cluster hack/deploy.sh down

.PHONY: help
help:
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-18s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
