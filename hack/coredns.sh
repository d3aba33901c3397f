#!/usr/bin/env bash
# Builds CoreDNS (a static binary) from the Go module proxy, cached by
# version; prints its path. ~5 minutes cold on 2 cores. It needs its own
# client-go, so it does not share the Kubernetes build cache.
source "$(dirname "$0")/lib/common.sh"

version=v1.15.0
dir="$VMSCALE_CACHE/coredns/$version-$(go env GOVERSION)"
if [ ! -x "$dir/coredns" ]; then
	mkdir -p "$dir"
	log "building CoreDNS $version (cold: ~5 min)"
	with_progress "go install coredns" env CGO_ENABLED=0 GOBIN="$dir" GOFLAGS=-buildvcs=false \
		go install -trimpath "github.com/coredns/coredns@$version"
fi
echo "$dir/coredns"
