#!/usr/bin/env bash
# Installs the Kubernetes binaries the tests and the local cluster run, cached
# by version:
#   etcd            Debian's etcd-server package
#   kube-apiserver, kubectl, kube-controller-manager, kube-scheduler, kubelet,
#   kube-proxy      built from k8s.io/kubernetes at the version in go.mod, from
#                   this module's own graph (so they always match the client
#                   libraries), in one `go build` so shared packages compile once.
# Built without -trimpath so the Go build cache is shared with the tests.
# Prints the folder holding them (usable as KUBEBUILDER_ASSETS).
#
#   hack/k8s-binaries.sh
source "$(dirname "$0")/lib/common.sh"

version="$(k8s_version)"
goversion="$(go env GOVERSION)"
dir="$VMSCALE_CACHE/k8s/$version-$goversion"
mkdir -p "$dir"

apt_install etcd-server
ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$dir/etcd"

want=(kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet kube-proxy)
missing=()
for b in "${want[@]}"; do
	[ -x "$dir/$b" ] || missing+=("k8s.io/kubernetes/cmd/$b")
done

if [ ${#missing[@]} -gt 0 ]; then
	minor="$(echo "$version" | cut -d. -f2)"
	ldflags="-X k8s.io/component-base/version.gitVersion=$version"
	ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
	log "building ${missing[*]} at $version (cold: ~8 min on 2 cores; warm: seconds)"
	tmp="$(mktemp -d "$dir/.build.XXXX")"
	(cd "$VMSCALE_ROOT" && with_progress "go build kubernetes" \
		go build -ldflags "$ldflags" -o "$tmp/" "${missing[@]}")
	mv "$tmp"/* "$dir/"
	rmdir "$tmp"
fi
echo "$dir"
