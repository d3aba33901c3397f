#!/usr/bin/env bash
# Regenerates every generated file: deepcopy code (api/v1), CRDs
# (config/crd/bases), webhook configurations (config/webhook/manifests.yaml),
# RBAC (config/rbac/role.yaml) and the rendered all-in-one manifests
# (deploy/neonvm.yaml).
#
#   hack/generate.sh            write into the repository
#   hack/generate.sh OUT        write into OUT, mirroring the repository's
#                               paths (the freshness test compares the two)
source "$(dirname "$0")/lib/common.sh"
cd "$VMSCALE_ROOT"

out="${1:-$VMSCALE_ROOT}"
tools=(go tool -modfile=hack/tools/go.mod)

if [ "$out" != "$VMSCALE_ROOT" ]; then
	mkdir -p "$out/api/v1" "$out/deploy"
	cp -r config "$out/"
	rm -f "$out"/config/crd/bases/*.yaml
fi

"${tools[@]}" controller-gen object:headerFile=hack/boilerplate.go.txt paths=./api/... \
	output:object:dir="$out/api/v1"
"${tools[@]}" controller-gen crd webhook rbac:roleName=neonvm-controller \
	paths=./api/... paths=./controllers/... paths=./pkg/... paths=./cmd/... \
	output:crd:dir="$out/config/crd/bases" \
	output:webhook:dir="$out/config/webhook" \
	output:rbac:dir="$out/config/rbac"
mkdir -p "$out/deploy"
"${tools[@]}" kustomize build "$out/config/default" > "$out/deploy/neonvm.yaml.tmp"
mv "$out/deploy/neonvm.yaml.tmp" "$out/deploy/neonvm.yaml"
