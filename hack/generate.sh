#!/usr/bin/env bash
# Regenerates every generated file: deepcopy code (api/v1), CRDs
# (config/crd/bases), webhook configurations (config/webhook/manifests.yaml),
# RBAC (config/rbac/role.yaml) and the rendered all-in-one manifests
# (deploy/neonvm.yaml: the controller alone, with cert-manager;
# deploy/vmscale.yaml: everything; deploy/vmscale-cert-manager.yaml: everything,
# with cert-manager).
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
	paths=./api/... paths=./internal/... paths=./neonvm/... paths=./pkg/... paths=./cmd/... \
	output:crd:dir="$out/config/crd/bases" \
	output:webhook:dir="$out/config/webhook" \
	output:rbac:dir="$out/config/rbac"
mkdir -p "$out/deploy"
render() { # render CONFIG FILE
	"${tools[@]}" kustomize build "$out/config/$1" > "$out/deploy/$2.tmp"
	mv "$out/deploy/$2.tmp" "$out/deploy/$2"
}
render default neonvm.yaml
render deploy vmscale.yaml
render deploy-cert-manager vmscale-cert-manager.yaml
